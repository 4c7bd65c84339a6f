"""The `tstack` command. Every TstackError ends as one line on stderr and exit code 2."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from tstack.api import analyze as analyze_config
from tstack.cli_common import parse_ints, progress_bar
from tstack.errors import SpecError, TstackError
from tstack.hardware import device_presets, load_device
from tstack.models import load_model, model_presets
from tstack.report import files, table, units
from tstack.report.repro_table import print_repro_table, summary_line
from tstack.repro import reproduce_002
from tstack.spec import RunSpec
from tstack.sweep import COLUMNS
from tstack.sweep import sweep as run_sweep
from tstack.workload.params import param_count

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="tstack: what a Transformer costs, what it really costs, and how to make it cheaper.")
console = Console()

MODEL_ARG = typer.Argument(..., help="preset name, a tstack model .yaml, or a HuggingFace config.json")
DEVICE_OPT = typer.Option("a100", "--device", "-d", help="device preset or device .yaml file")


def _run_spec(model_seq: int, mode: str, batch: int, seq: int | None, tgt_seq: int, precision: str,
              optimizer: str, checkpoint: str, dropout: bool, phase: str, kv_len: int) -> RunSpec:
    return RunSpec(mode=mode, batch=batch, seq=seq or model_seq, tgt_seq=tgt_seq, precision=precision,
                   optimizer=optimizer, checkpoint=checkpoint, dropout=dropout, phase=phase, kv_len=kv_len)


@app.command()
def presets() -> None:
    """List the model and device presets tstack knows."""
    wide = Console(width=max(console.width, 130))
    t = Table(title="models", title_justify="left", show_edge=False)
    for col in ("name", "arch", "N", "H", "h", "F", "params"):
        t.add_column(col, no_wrap=True, min_width=len(col))
    t.add_column("description", overflow="ellipsis", no_wrap=True, max_width=48)
    for name in model_presets():
        m = load_model(name)
        layers = f"{m.layers}+{m.decoder_layers}" if m.decoder_layers else str(m.layers)
        t.add_row(name, m.arch, layers, str(m.hidden), str(m.heads), str(m.ffn), units.si(param_count(m), ""),
                  m.description)
    wide.print(t)
    d = Table(title="devices", title_justify="left", show_edge=False)
    for col in ("name", "kind", "fp32 FLOP/s", "fp16 matrix FLOP/s", "bandwidth"):
        d.add_column(col, no_wrap=True, min_width=len(col))
    d.add_column("description", overflow="ellipsis", no_wrap=True, max_width=48)
    for name in device_presets():
        dev = load_device(name)
        fp16 = dev.peak_flops.get("matrix", {}).get("fp16") or dev.peak_flops["vector"].get("fp16")
        d.add_row(name, dev.kind, units.si(dev.peak("vector", "fp32"), "FLOP/s"),
                  units.si(fp16, "FLOP/s") if fp16 else "-", units.si(dev.memory_bandwidth, "B/s"), dev.description)
    wide.print(d)


@app.command()
def analyze(
    model: str = MODEL_ARG,
    mode: str = typer.Option("infer", help="infer | train"),
    batch: int = typer.Option(1, "--batch", "-b"),
    seq: int | None = typer.Option(None, "--seq", "-s", help="sequence length (default: the model's)"),
    tgt_seq: int = typer.Option(0, help="target length of an enc-dec model (default: --seq)"),
    precision: str = typer.Option("fp32", help="fp32 | fp16-mixed | bf16-mixed | int8"),
    optimizer: str = typer.Option("lamb", help="lamb | adam | sgd"),
    checkpoint: str = typer.Option("none", help="none | sqrt | every-K"),
    dropout: bool = typer.Option(True, help="dropout kernels in training"),
    phase: str = typer.Option("prefill", help="prefill | decode (decoders)"),
    kv_len: int = typer.Option(0, help="tokens already in the KV cache (decode)"),
    device: str = DEVICE_OPT,
    group_by: str | None = typer.Option(None, help="layer, block, pass, kind, group (002), nlpfast-op, dtype, name"),
    json_out: Path | None = typer.Option(None, "--json", help="write every op as JSON ('-' for stdout)"),
    csv_out: Path | None = typer.Option(None, "--csv", help="write every op as CSV ('-' for stdout)"),
    plot: Path | None = typer.Option(None, help="write a roofline plot (.png, .svg, .pdf)"),
) -> None:
    """Predict one iteration and print the Demystifying-BERT hierarchy (or a --group-by table)."""
    spec = load_model(model)
    dev = load_device(device)
    run = _run_spec(spec.default_seq, mode, batch, seq, tgt_seq, precision, optimizer, checkpoint, dropout, phase, kv_len)
    if plot:
        files.check_figure_format("--plot", plot)
    b = analyze_config(spec, run, dev)
    if group_by:
        b.group_by(group_by)  # validate the key before anything is written
    with files.all_or_nothing([json_out, csv_out, plot]) as tmp:
        if json_out:
            _emit(json_out, tmp, b.to_json())
        if csv_out:
            _emit(csv_out, tmp, b.to_pandas().to_csv(index=False))
        if plot:
            from tstack.report import plots  # matplotlib only when a figure is asked for

            plots.roofline_plot(b, dev, tmp[plot], dtype=b.ops[0].dtype, fmt=plot.suffix.lstrip(".").lower())
    if str(json_out) != "-" and str(csv_out) != "-":
        table.print_breakdown(b, group_by, console)


def _emit(path: Path, tmp: dict[Path, Path], text: str) -> None:
    """Standard output for '-', else the temporary file that all_or_nothing moves into place."""
    if str(path) == "-":
        sys.stdout.write(text)
    else:
        tmp[path].write_text(text)


@app.command()
def sweep(
    model: str = MODEL_ARG,
    mode: str = typer.Option("infer", help="infer | train"),
    batch: str = typer.Option("1", "--batch", "-b", help="comma-separated values"),
    seq: str | None = typer.Option(None, "--seq", "-s", help="comma-separated values (default: the model's)"),
    layers: str | None = typer.Option(None, help="comma-separated N values"),
    hidden: str | None = typer.Option(None, help="comma-separated d_model values (d_ff follows 4·d_model)"),
    ffn: str | None = typer.Option(None, help="comma-separated d_ff values"),
    heads: str | None = typer.Option(None, help="comma-separated h values"),
    precision: str = typer.Option("fp32", help="comma-separated precisions"),
    optimizer: str = typer.Option("lamb", help="lamb | adam | sgd"),
    checkpoint: str = typer.Option("none", help="none | sqrt | every-K"),
    device: str = DEVICE_OPT,
    out: Path | None = typer.Option(None, help="write the tidy table (.csv or .json)"),
    plot: Path | None = typer.Option(None, help="write stacked breakdown bars per configuration"),
    executor: str = typer.Option("process", help="process | ray | serial"),
    workers: int | None = typer.Option(None, help="worker count (default: all cores)"),
) -> None:
    """Cartesian sweep; prints the share of each 002 group per configuration."""
    spec = load_model(model)
    dev = load_device(device)
    axes: dict[str, list] = {"batch": parse_ints("--batch", batch)}
    axes["seq"] = parse_ints("--seq", seq) if seq else [spec.default_seq]
    for name, text in (("layers", layers), ("hidden", hidden), ("ffn", ffn), ("heads", heads)):
        if text:
            axes[name] = parse_ints(f"--{name}", text)
    axes["precision"] = [p.strip() for p in precision.split(",") if p.strip()]
    run = RunSpec(mode=mode, seq=axes["seq"][0], optimizer=optimizer, checkpoint=checkpoint)
    n = 1
    for v in axes.values():
        n *= len(v)
    if out and out.suffix not in (".csv", ".json"):
        raise SpecError([f"--out={str(out)!r} must end in .csv or .json"])
    if plot:
        files.check_figure_format("--plot", plot)
    with progress_bar() as bar:
        task = bar.add_task("sweep", total=n)
        df = run_sweep(spec, axes, dev, run=run, executor=executor, workers=workers,
                       progress=lambda k: bar.advance(task, k))
    varying = [c for c in COLUMNS if df[c].nunique() > 1] or ["model"]
    with files.all_or_nothing([out, plot]) as tmp:
        if out:
            _emit(out, tmp, df.to_csv(index=False) if out.suffix == ".csv" else df.to_json(orient="records", indent=1))
        if plot:
            from tstack.report import plots  # matplotlib only when a figure is asked for

            plots.stacked_bars(df, tmp[plot], varying, title=f"{spec.name} {mode} on {dev.name}",
                               fmt=plot.suffix.lstrip(".").lower())
    wide = df.pivot_table(index=varying, columns="group", values="share", aggfunc="sum", sort=False).fillna(0.0)
    totals = df.groupby(varying, sort=False)["seconds"].sum()
    t = Table(show_edge=False)
    for col in [*varying, "time", *wide.columns]:
        t.add_column(str(col), justify="right")
    for key, row in wide.iterrows():
        key = key if isinstance(key, tuple) else (key,)
        t.add_row(*map(str, key), units.seconds(totals[key if len(key) > 1 else key[0]]),
                  *(units.percent(v) for v in row))
    console.print(t)


@app.command()
def repro(
    paper: str = typer.Argument(..., help="002 (Demystifying BERT)"),
    device: str = typer.Option("mi100", "--device", "-d", help="device preset or device .yaml file"),
    notes: bool = typer.Option(True, help="show the note explaining each gap"),
) -> None:
    """Print a paper's reported proportions next to tstack's predictions, with the gaps."""
    if paper != "002":
        raise SpecError([f"paper={paper!r} is not one of 002"])
    rows = reproduce_002(device)
    wide = Console(width=max(console.width, 160))
    print_repro_table(rows, wide, title=f"Demystifying BERT (002) vs tstack on {device}", notes=notes)
    wide.print(summary_line(rows))


def _register_commands() -> None:
    from tstack import cli_accel, cli_int, cli_opt, cli_perf

    app.command()(cli_perf.profile)
    app.command()(cli_perf.calibrate)
    app.command()(cli_perf.validate)
    app.add_typer(cli_opt.app, name="opt")
    app.add_typer(cli_int.app, name="int")
    app.add_typer(cli_accel.app, name="accel")


_register_commands()


def main() -> None:
    try:
        app()
    except TstackError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: nothing partial was written", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()

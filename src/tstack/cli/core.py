"""The `tstack` command: parse, call the API, hand records to report/ (docs/output.md has the output contract).

Exit codes: 0 success; 1 an internal error (a bug: please report it; -v shows the traceback); 2 a usage error
or invalid input (one line on stderr naming the option or field, the value and what is allowed); 130 interrupted
(Ctrl-C); 143 terminated (SIGTERM). An interrupted or failed command leaves no partial output file behind.
"""

from __future__ import annotations

import re
import signal
import sys
from pathlib import Path

import typer
from rich.table import Table

from tstack.api import analyze as analyze_config
from tstack.cli.common import (
    ATTENTION_OPT,
    CSV_OPT,
    EXECUTION_OPT,
    JSON_OPT,
    STATE,
    Outputs,
    check_choice,
    check_int,
    check_mode_on,
    console,
    parse_ints,
    parse_names,
    progress,
    run_spec,
    worker_count,
)
from tstack.costmodel.backend import default_precision, load_target, run_defaults
from tstack.errors import SpecError, TstackError
from tstack.hardware.device import DeviceSpec, device_presets, load_device
from tstack.hardware.network import load_network, network_presets
from tstack.models import load_model, model_presets
from tstack.report import output, table, units
from tstack.report.repro_table import print_repro_table, summary_line
from tstack.spec import PRECISIONS, RunSpec
from tstack.studies.sections import SECTIONS, run_sections, title
from tstack.sweep import COLUMNS
from tstack.sweep import sweep as run_sweep
from tstack.workload.params import param_count

EXIT_CODES = ("Exit codes: 0 success; 1 internal error (a bug; -v shows the traceback); 2 usage error or invalid "
              "input; 130 interrupted (Ctrl-C); 143 terminated (SIGTERM).")
app = typer.Typer(pretty_exceptions_enable=False, no_args_is_help=True, epilog=EXIT_CODES,
                  help="tstack: what a Transformer costs, what it really costs, and how to make it cheaper.")
out = console()

MODEL_ARG = typer.Argument(..., help="preset name, a tstack model .yaml, a HuggingFace config.json or folder, or a "
                                     "HuggingFace id (org/name) in the local cache")
DEVICE_OPT = typer.Option("a100", "--device", "-d", help="device preset or device .yaml file")


def _version(value: bool) -> None:
    if value:
        print(f"tstack {output.tstack_version()}")
        raise typer.Exit()


@app.callback()
def _global(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version and exit"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress and no notes on stderr; results and errors only"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="more detail; the traceback of an internal error"),
) -> None:
    """tstack: what a Transformer costs, what it really costs, and how to make it cheaper."""
    if quiet and verbose:
        raise SpecError(["--quiet and --verbose exclude each other"])
    STATE["verbosity"] = -1 if quiet else 1 if verbose else 0


@app.command()
def presets(json_out: Path | None = JSON_OPT, csv_out: Path | None = CSV_OPT) -> None:
    """List the model, device and network presets tstack knows."""
    outputs = Outputs(json=json_out, csv=csv_out)
    models = [load_model(name) for name in model_presets()]
    devices = [load_device(name) for name in device_presets()]
    records = [{"type": "model", "name": m.name, "arch": m.arch, "layers": m.layers, "decoder_layers": m.decoder_layers,
                "hidden": m.hidden, "heads": m.heads, "ffn": m.ffn, "params": param_count(m),
                "description": m.description} for m in models]
    records += [{"type": "device", "name": d.name, "kind": d.kind, "fp32_vector_flop_per_second": d.peak("vector", "fp32"),
                 "fp16_matrix_flop_per_second": _fp16(d), "memory_bytes_per_second": d.memory_bandwidth,
                 "description": d.description} for d in devices]
    networks = [load_network(name) for name in network_presets()]
    records += [{"type": "network", "name": n.name, "levels": " / ".join(lv.name for lv in n.levels),
                 "devices_per_node": n.levels[0].size if len(n.levels) > 1 else 0,
                 "node_bytes_per_second": n.levels[0].bandwidth, "cluster_bytes_per_second": n.levels[-1].bandwidth,
                 "algorithm": n.algorithm, "description": n.description} for n in networks]
    outputs.write(output.document("presets", {}, records))
    if outputs.stdout_taken:
        return
    t = Table(title="models", title_justify="left", show_edge=False)
    for col in ("name", "arch", "N", "H", "h", "F", "params", "description"):
        t.add_column(col, no_wrap=True)
    for m in models:
        layers = f"{m.layers}+{m.decoder_layers}" if m.decoder_layers else str(m.layers)
        t.add_row(m.name, m.arch, layers, str(m.hidden), str(m.heads), str(m.ffn), units.si(param_count(m), ""),
                  m.description)
    out.print(t)
    d = Table(title="devices", title_justify="left", show_edge=False)
    for col in ("name", "kind", "fp32 FLOP/s", "fp16 matrix FLOP/s", "bandwidth", "description"):
        d.add_column(col, no_wrap=True)
    for dev in devices:
        fp16 = _fp16(dev)
        d.add_row(dev.name, dev.kind, units.si(dev.peak("vector", "fp32"), "FLOP/s"),
                  units.si(fp16, "FLOP/s") if fp16 else "-", units.si(dev.memory_bandwidth, "B/s"), dev.description)
    out.print(d)
    n = Table(title="networks (tstack cluster --network)", title_justify="left", show_edge=False)
    for col in ("name", "devices per node", "in node", "across nodes", "description"):
        n.add_column(col, no_wrap=True)
    for r in records[-len(networks):] if networks else []:
        n.add_row(r["name"], str(r["devices_per_node"] or "-"), units.si(r["node_bytes_per_second"], "B/s"),
                  units.si(r["cluster_bytes_per_second"], "B/s"), r["description"])
    out.print(n)


def _fp16(dev: DeviceSpec) -> float | None:
    return dev.peak_flops.get("matrix", {}).get("fp16") or dev.peak_flops["vector"].get("fp16")


@app.command()
def analyze(
    model: str = MODEL_ARG,
    mode: str = typer.Option("infer", help="infer | train"),
    batch: int = typer.Option(1, "--batch", "-b"),
    seq: int | None = typer.Option(None, "--seq", "-s", help="sequence length (default: the model's; decode: 1 new "
                                                            "token)"),
    tgt_seq: int = typer.Option(0, help="target length of an enc-dec model (default: --seq)"),
    precision: str | None = typer.Option(None, help="fp32 | tf32 | fp16-mixed | bf16-mixed | int8 (default: fp32; int8 "
                                                     "on an accelerator)"),
    optimizer: str = typer.Option("lamb", help="lamb | adam | sgd"),
    checkpoint: str = typer.Option("none", help="none | sqrt | every-K"),
    dropout: bool = typer.Option(True, help="dropout kernels in training"),
    phase: str = typer.Option("prefill", help="prefill | decode (decoders)"),
    kv_len: int = typer.Option(0, help="tokens already in the KV cache (decode)"),
    execution: str | None = EXECUTION_OPT,
    attention: str = ATTENTION_OPT,
    mlm_fraction: float = typer.Option(0.15, help="share of positions an MLM head scores (BERT: 0.15; HF heads: 1)"),
    device: str = typer.Option("a100", "--device", "-d", help="device or accelerator preset (e.g. a100, "
                                                              "gemmini-ibert), or a device or accelerator .yaml file"),
    group_by: str | None = typer.Option(None, help="layer, block, pass, kind, group (002), nlpfast-op, dtype, name, "
                                                   "accel (000 categories, on an accelerator)"),
    fusion: str = typer.Option("none", "--fusion", help="fusion profile: none | apex | inductor | flash, or a fusion "
                                                        ".yaml file (tstack fuse compares them)"),
    json_out: Path | None = JSON_OPT,
    csv_out: Path | None = CSV_OPT,
    plot: Path | None = typer.Option(None, "--plot", help="write a roofline plot (.png, .svg, .pdf)"),
) -> None:
    """Predict one iteration and print the Demystifying-BERT hierarchy (or a --group-by table).

    On an accelerator (gemmini-*) the run is an int8 inference and every op carries its joules."""
    outputs = Outputs(json=json_out, csv=csv_out, plot=plot)
    check_int("--seq", seq)
    spec = load_model(model)
    dev = load_target(device)
    if plot is not None and not isinstance(dev, DeviceSpec):
        raise SpecError([f"--plot draws a roofline, which needs a device with peak rates; {dev.name} is an "
                         "accelerator (tstack accel run --plot draws its time breakdown)"])
    check_mode_on(dev, mode)
    run = run_spec(spec.default_seq, seq, mode=mode, batch=batch, tgt_seq=tgt_seq, optimizer=optimizer,
                   checkpoint=checkpoint, dropout=dropout, phase=phase, kv_len=kv_len,
                   **run_defaults(dev, precision, execution), attention=attention, mlm_fraction=mlm_fraction)
    b = analyze_config(spec, run, dev, fusion=fusion)
    if group_by is not None:
        b.group_by(group_by)  # validate the key before anything is written

    def figure(path: Path) -> None:
        from tstack.report import plots  # matplotlib only when a figure is asked for

        plots.roofline_plot(b, dev, path, dtype=b.ops[0].dtype, fmt=outputs.plot_format)

    outputs.write(output.breakdown_document("analyze", b, group_by=group_by, fusion=fusion), figure=figure)
    if not outputs.stdout_taken:
        table.print_breakdown(b, group_by, out)
        if b.total.joules is not None:
            out.print(f"energy {units.si(b.total.joules, 'J')} per iteration")


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
    precision: str | None = typer.Option(None, help="comma-separated precisions (default: fp32; int8 on an "
                                                    "accelerator)"),
    optimizer: str = typer.Option("lamb", help="lamb | adam | sgd"),
    checkpoint: str = typer.Option("none", help="none | sqrt | every-K"),
    execution: str | None = EXECUTION_OPT,
    attention: str = ATTENTION_OPT,
    device: str = DEVICE_OPT,
    json_out: Path | None = JSON_OPT,
    csv_out: Path | None = CSV_OPT,
    plot: Path | None = typer.Option(None, "--plot", help="write stacked breakdown bars per configuration"),
    executor: str = typer.Option("process", help="process | ray | serial"),
    workers: int | None = typer.Option(None, help="worker count (default: the cores available)"),
) -> None:
    """Cartesian sweep; prints the share of each 002 group per configuration."""
    outputs = Outputs(json=json_out, csv=csv_out, plot=plot)
    workers = worker_count("--workers", workers)
    spec = load_model(model)
    dev = load_target(device)
    axes: dict[str, list] = {"batch": parse_ints("--batch", batch)}
    axes["seq"] = parse_ints("--seq", seq) if seq is not None else [spec.default_seq]
    for name, text in (("layers", layers), ("hidden", hidden), ("ffn", ffn), ("heads", heads)):
        if text is not None:
            axes[name] = parse_ints(f"--{name}", text)
    axes["precision"] = parse_names("--precision", precision if precision is not None else default_precision(dev),
                                    PRECISIONS)
    run = RunSpec(mode=mode, seq=axes["seq"][0], optimizer=optimizer, checkpoint=checkpoint,
                  execution=run_defaults(dev, execution=execution)["execution"], attention=attention)
    n = 1
    for v in axes.values():
        n *= len(v)
    if n > MAX_SWEEP_POINTS:
        raise SpecError([f"the sweep has {n} configurations; at most {MAX_SWEEP_POINTS} are allowed in one run"])
    with progress("sweep", total=n, unit="configurations") as advance:
        df = run_sweep(spec, axes, dev, run=run, executor=executor, workers=workers, progress=advance)
    varying = [c for c in COLUMNS if df[c].nunique() > 1] or ["model"]
    doc = output.document("sweep", output.run_description(spec, run, device=dev.name, axes=axes, executor=executor),
                          df.to_dict(orient="records"))

    def figure(path: Path) -> None:
        from tstack.report import plots  # matplotlib only when a figure is asked for

        plots.stacked_bars(df, path, varying, title=f"{spec.name} {mode} on {dev.name}", fmt=outputs.plot_format)

    outputs.write(doc, figure=figure)
    if outputs.stdout_taken:
        return
    wide = df.pivot_table(index=varying, columns="group", values="share", aggfunc="sum", sort=False).fillna(0.0)
    totals = df.groupby(varying, sort=False)["seconds"].sum()
    t = Table(show_edge=False)
    for col in [*varying, "time", *wide.columns]:
        t.add_column(str(col), justify="right")
    for key, row in wide.iterrows():
        key = key if isinstance(key, tuple) else (key,)
        t.add_row(*map(str, key), units.seconds(totals[key if len(key) > 1 else key[0]]),
                  *(units.percent(v) for v in row))
    out.print(t)


MAX_SWEEP_POINTS = 100_000


@app.command()
def repro(
    paper: str = typer.Argument(..., help="the paper: " + ", ".join(SECTIONS)),
    section: str = typer.Option("all", "--section", "-s", help="comma-separated sections of the paper, or all"),
    device: str = typer.Option("mi100", "--device", "-d", help="device preset or device .yaml file (GPU sections)"),
    notes: bool = typer.Option(True, help="show the note explaining each gap"),
    json_out: Path | None = JSON_OPT,
    csv_out: Path | None = CSV_OPT,
) -> None:
    """Print a paper's reported figures next to tstack's predictions, with the gaps, section by section."""
    outputs = Outputs(json=json_out, csv=csv_out)
    check_choice("paper", paper, SECTIONS)
    known = list(SECTIONS[paper])
    names = known if section == "all" else list(dict.fromkeys(parse_names("--section", section, known)))
    dev = load_device(device)
    done = run_sections(paper, names, dev)
    rows = [r for _, part in done for r in part]
    records = [{"section": name, **r.record()} for name, part in done for r in part]
    outputs.write(output.document("repro", {"paper": paper, "sections": names, "device": dev.name}, records,
                                  summary={"line": summary_line(rows)}))
    if outputs.stdout_taken:
        return
    for name, part in done:
        print_repro_table(part, out, title=title(paper, name, dev), notes=notes)
    out.print(summary_line(rows))


@app.command("schema")
def schema_cmd(command: str = typer.Argument(..., help="a command name as the JSON documents give it, e.g. analyze, "
                                                        "'accel run', 'opt bench'")) -> None:
    """Print the JSON Schema of a command's --json document (docs/output.md)."""
    import json

    from tstack.report.schema import COMMANDS, schema

    check_choice("command", command, COMMANDS)
    print(json.dumps(schema(command), indent=1))


def _register_commands() -> None:
    from tstack.cli import accel as cli_accel
    from tstack.cli import cluster as cli_cluster
    from tstack.cli import fpga as cli_fpga
    from tstack.cli import fuse as cli_fuse
    from tstack.cli import integer as cli_int
    from tstack.cli import nas as cli_nas
    from tstack.cli import nmc as cli_nmc
    from tstack.cli import opt as cli_opt
    from tstack.cli import perf as cli_perf
    from tstack.cli import trace as cli_trace

    app.command()(cli_perf.profile)
    app.command()(cli_perf.calibrate)
    app.command()(cli_perf.validate)
    app.command(name="import-trace")(cli_trace.import_trace)
    app.add_typer(cli_opt.app, name="opt")
    app.add_typer(cli_int.app, name="int")
    app.add_typer(cli_accel.app, name="accel")
    app.add_typer(cli_fpga.app, name="fpga")
    app.command()(cli_fuse.fuse)
    app.command()(cli_nmc.nmc)
    app.add_typer(cli_cluster.app, name="cluster")
    app.add_typer(cli_nas.app, name="nas")


_register_commands()


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that every cleanup (temporary files, worker processes) runs."""


class Interrupted(BaseException):
    """SIGINT (Ctrl-C); not a KeyboardInterrupt, which typer would turn into a silent exit."""


def _on_signal(signum: int, frame: object) -> None:
    raise Terminated() if signum == signal.SIGTERM else Interrupted()


def run(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: sys.argv[1:]); return the exit code (see the module docstring)."""
    from tstack.cli.common import note

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = app(args=argv, prog_name="tstack", standalone_mode=False)
        return code if isinstance(code, int) else 0
    except TstackError as e:
        print(f"error: {_shortened(str(e))}", file=sys.stderr)
        return 2
    except (typer.Abort, KeyboardInterrupt, Interrupted):
        print("interrupted: nothing partial was written", file=sys.stderr)
        return 130
    except Terminated:
        print("terminated: nothing partial was written", file=sys.stderr)
        return 143
    except Exception as e:  # the last line of defence: one line, never a traceback
        if type(e).__name__ == "NoArgsIsHelpError":  # typer's (or click's) help for a group called without a command
            e.show()
            return 2
        if hasattr(e, "format_message") and isinstance(getattr(e, "exit_code", None), int):  # a click usage error
            print(f"error: {_shortened(e.format_message())} (see '{_command_path(argv)} --help')", file=sys.stderr)
            return e.exit_code
        if isinstance(e, MemoryError) or _out_of_memory(e):
            print(f"error: out of memory ({_shortened(str(e))[:160]}): the sizes asked for do not fit this machine; "
                  "try smaller ones", file=sys.stderr)
            return 2
        if STATE["verbosity"] > 0:
            import traceback

            traceback.print_exc()
        else:
            note("(-v shows the traceback)")
        print(f"internal error: {type(e).__name__}: {str(e)[:300]} — please report it", file=sys.stderr)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _out_of_memory(e: Exception) -> bool:
    """PyTorch's allocators raise RuntimeError subclasses (torch.OutOfMemoryError among them) when memory runs out."""
    text = str(e)
    return isinstance(e, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text.lower())


def _shortened(message: str) -> str:
    """One line, with any over-long word (a pasted value) cut: a message never repeats a 100,000-character input."""
    message = " ".join(message.split())
    return re.sub(r"\S{120,}", lambda m: f"{m.group()[:60]}…({len(m.group())} characters)", message)


def _command_path(argv: list[str] | None) -> str:
    words = [w for w in (sys.argv[1:] if argv is None else argv) if not w.startswith("-")][:2]
    groups = {g.name for g in app.registered_groups}
    return "tstack " + (" ".join(words[:2]) if words and words[0] in groups else (words[0] if words else "")).strip()


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()

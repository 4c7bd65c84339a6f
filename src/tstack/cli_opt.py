"""`tstack opt`: NLP-Opt: partitioned and zero-skipping attention/FFN kernels, their benchmarks and accuracy on MiniLM.

torch is imported inside commands so `tstack --help` stays fast.
"""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from tstack.cli_common import parse_ints
from tstack.errors import SpecError
from tstack.report import units

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="NLP-Opt: partitioned and zero-skipping attention/FFN kernels, their benchmarks and accuracy on MiniLM.")
console = Console()


def _names(option: str, text: str, allowed: tuple[str, ...]) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in names if v not in allowed]
    if bad or not names:
        raise SpecError([f"{option}={text!r}: {', '.join(bad) or 'no values'} not in {', '.join(allowed)}"])
    return names


def _ratio(t, ref) -> str:
    return f"{t.median / ref.median:.2f}" if t is not None and ref is not None else "-"


def _rows_table(rows) -> Table:
    table = Table(show_lines=False)
    for col in ("model", "part", "S", "variant", "median", "p10–p90", "÷ base", "÷ sdpa", "peak (layer)", "peak (attn)",
                "max |err|"):
        table.add_column(col, justify="left" if col in ("model", "part", "variant") else "right")
    by_case: dict[tuple, dict] = {}
    for r in rows:
        by_case.setdefault((r.model, r.part, r.seq), {})[r.variant] = r.timing
    for r in rows:
        refs = by_case[(r.model, r.part, r.seq)]
        if r.timing is None:
            table.add_row(r.model, r.part, str(r.seq), r.variant, "n/a", r.note, "-", "-", "-", "-", "-")
            continue
        t = r.timing
        table.add_row(r.model, r.part, str(r.seq), r.variant, units.seconds(t.median),
                      f"{units.seconds(t.p10)}–{units.seconds(t.p90)}", _ratio(t, refs.get("base")),
                      _ratio(t, refs.get("sdpa")), units.si(r.peak_bytes, "B"), units.si(r.attention_peak_bytes, "B"),
                      f"{r.max_abs_err:.1e}")
    return table


@app.command()
def bench(
    models: str = typer.Argument(..., help="comma-separated: bert, transformer, memnet (003 Table IV base configs)"),
    seq: str = typer.Option("256,1024", "--seq", "-s", help="sequence lengths (memnet: memory slots), comma-separated"),
    variants: str = typer.Option("base,P,PC,PCF,PCF+ZS", help="variants; base and sdpa are always timed as references"),
    batch: int = typer.Option(1, "--batch", "-b", help="batch size"),
    threads: int = typer.Option(1, help="intra-op threads (1: a shared machine stalls multi-thread barriers)"),
    repeats: int = typer.Option(5, help="timed runs per variant, round-robin across variants (median reported)"),
    chunk: int | None = typer.Option(None, help="keys per column-based chunk and zero skipping's tile edge "
                                     "(default: sized from S and the L2; zero skipping's tile 64)"),
    head_block: int | None = typer.Option(None, help="heads per partial-head group (default: sized from the L2)"),
    ffn_blocks: int | None = typer.Option(None, help="feed-forward splitting blocks of d_FF (default: sized from the L2)"),
    score_threshold: float = typer.Option(0.0, help="zero skipping: probabilities under this are skipped"),
    zero_ratio: float = typer.Option(1.0, help="V-Gen skipping: zero share of a key column that skips its V row"),
) -> None:
    """Time every variant of one layer against the reference and F.scaled_dot_product_attention (003 Fig. 10)."""
    from tstack.kernels.api import Params
    from tstack.kernels.bench import BENCH_VARIANTS, MODELS, build_cases, run_case
    from tstack.profiler.runtime import RuntimeConfig, controlled, describe

    names = _names("models", models, tuple(MODELS))
    wanted = _names("--variants", variants, BENCH_VARIANTS)
    order = ["sdpa", "base"] + [v for v in wanted if v not in ("sdpa", "base")]
    params = Params(score_threshold, zero_ratio, chunk, threads, head_block, ffn_blocks)
    cfg = RuntimeConfig(threads=threads)
    rows = []
    with controlled(cfg):
        for model in names:
            for s in parse_ints("--seq", seq):
                for case in build_cases(model, s, batch):
                    rows += run_case(case, order, params, cfg, repeats)
        console.print(describe(cfg))
    console.print("note: these modules allocate their intermediates on every call; the profiler's preallocation does not "
                  "apply to them (benchmarks/nlpopt.py fixes glibc's malloc policy)")
    console.print(f"batch {batch}, one layer per case (memnet: all hops), {params}")
    out = console if console.is_terminal else Console(width=200)  # one line per row, also when piped
    out.print(_rows_table(rows))


def _register_zero_skipping_commands() -> None:
    from tstack.cli_opt_zs import schedule, tradeoff

    app.command()(tradeoff)
    app.command()(schedule)


_register_zero_skipping_commands()

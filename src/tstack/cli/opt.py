"""`tstack opt`: NLP-Opt: partitioned and zero-skipping attention/FFN kernels, their benchmarks and accuracy on MiniLM.

torch is imported inside commands so `tstack --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from tstack.cli.common import (
    CSV_OPT,
    JSON_OPT,
    Outputs,
    check_float,
    check_int,
    console,
    need_torch,
    parse_ints,
    parse_names,
    progress,
    worker_count,
)
from tstack.cli.opt_zs import below_one
from tstack.report import output, units

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="NLP-Opt: partitioned and zero-skipping attention/FFN kernels, their benchmarks and accuracy on MiniLM.")
out = console()
MAX_BATCH = 1 << 16
MAX_REPEATS = 10_000
MAX_BLOCK = 1 << 20


def _rows_table(records: list[dict]) -> Table:
    table = Table(show_lines=False)
    for col in ("model", "part", "S", "variant", "median", "p10–p90", "÷ base", "÷ sdpa", "peak (layer)", "peak (attn)",
                "max |err|"):
        table.add_column(col, justify="left" if col in ("model", "part", "variant") else "right", no_wrap=True)
    for r in records:
        if r["median_seconds"] is None:
            table.add_row(r["model"], r["part"], str(r["seq"]), r["variant"], "n/a", r["note"], "-", "-", "-", "-", "-")
            continue
        table.add_row(r["model"], r["part"], str(r["seq"]), r["variant"], units.seconds(r["median_seconds"]),
                      f"{units.seconds(r['p10_seconds'])}–{units.seconds(r['p90_seconds'])}",
                      units.ratio(r["ratio_to_base"], ""), units.ratio(r["ratio_to_sdpa"], ""), units.si(r["peak_bytes"], "B"),
                      units.si(r["attention_peak_bytes"], "B"),
                      f"{r['max_abs_error']:.1e}")
    return table


@app.command()
def bench(
    models: str = typer.Argument(..., help="comma-separated: bert, transformer, memnet (003 Table IV base configs)"),
    seq: str = typer.Option("256,1024", "--seq", "-s", help="sequence lengths (memnet: memory slots), comma-separated"),
    variants: str = typer.Option("base,P,PC,PCF,PCF+ZS", help="variants; base and sdpa are always timed as references"),
    batch: int = typer.Option(1, "--batch", "-b", help="batch size"),
    threads: int = typer.Option(1, help="intra-op threads, at most the cores available (1: a shared machine stalls "
                                        "multi-thread barriers)"),
    repeats: int = typer.Option(5, help="timed runs per variant, round-robin across variants (median reported)"),
    chunk: int | None = typer.Option(None, help="keys per column-based chunk and zero skipping's tile edge "
                                     "(default: sized from S and the L2; zero skipping's tile 64)"),
    head_block: int | None = typer.Option(None, help="heads per partial-head group (default: sized from the L2)"),
    ffn_blocks: int | None = typer.Option(None, help="feed-forward splitting blocks of d_FF (default: sized from the L2)"),
    score_threshold: float = typer.Option(0.0, help="zero skipping: probabilities under this are skipped, in [0, 1)"),
    zero_ratio: float = typer.Option(1.0, help="V-Gen skipping: zero share of a key column that skips its V row, in "
                                               "[0, 1]"),
    json_out: Path | None = JSON_OPT,
    csv_out: Path | None = CSV_OPT,
) -> None:
    """Time every variant of one layer against the reference and F.scaled_dot_product_attention (003 Fig. 10)."""
    outputs = Outputs(json=json_out, csv=csv_out)
    need_torch()
    from tstack.profiler import memory
    from tstack.studies.nlpopt_bench import BENCH_VARIANTS, MODELS, case_count, memory_estimate

    names = parse_names("models", models, tuple(MODELS))
    wanted = parse_names("--variants", variants, BENCH_VARIANTS)
    seqs = parse_ints("--seq", seq)
    check_int("--batch", batch, 1, MAX_BATCH)
    worker_count("--threads", threads)
    check_int("--repeats", repeats, 1, MAX_REPEATS)
    for option, value in (("--chunk", chunk), ("--head-block", head_block), ("--ffn-blocks", ffn_blocks)):
        check_int(option, value, 1, MAX_BLOCK)
    below_one("--score-threshold", score_threshold)
    check_float("--zero-ratio", zero_ratio, 0.0, 1.0)
    order = ["sdpa", "base"] + [v for v in wanted if v not in ("sdpa", "base")]
    for model in names:
        for s in seqs:
            memory.guard(memory_estimate(model, s, batch, len(order)), "cpu", advice="reduce --seq or --batch")

    from tstack.kernels.api import Params
    from tstack.profiler.runtime import RuntimeConfig, controlled, describe
    from tstack.studies.nlpopt_bench import build_cases, record, run_case

    params = Params(score_threshold=score_threshold, zero_ratio=zero_ratio, chunk=chunk, threads=threads,
                    head_block=head_block, ffn_blocks=ffn_blocks)
    cfg = RuntimeConfig(threads=threads)
    rows = []
    total = sum(case_count(m) for m in names) * len(seqs) * len(order) * repeats
    with controlled(cfg), progress("opt bench", total, "timed runs") as advance:
        for model in names:
            for s in seqs:
                for case in build_cases(model, s, batch):
                    rows += run_case(case, order, params, cfg, repeats, advance)
        runtime = describe(cfg)
    records = [record(r, rows) for r in rows]
    run = output.run_description(models=names, seq=seqs, variants=order, batch=batch, threads=threads, repeats=repeats,
                                 chunk=chunk, head_block=head_block, ffn_blocks=ffn_blocks,
                                 score_threshold=score_threshold, zero_ratio=zero_ratio, runtime=runtime)
    outputs.write(output.document("opt bench", run, records))
    if outputs.stdout_taken:
        return
    out.print(runtime)
    out.print("note: these modules allocate their intermediates on every call; the profiler's preallocation does not "
              "apply to them (benchmarks/nlpopt.py fixes glibc's malloc policy)")
    out.print(f"batch {batch}, one layer per case (memnet: all hops), {params}")
    out.print(_rows_table(records))


def _register_zero_skipping_commands() -> None:
    from tstack.cli.opt_zs import schedule, tradeoff

    app.command()(tradeoff)
    app.command()(schedule)


_register_zero_skipping_commands()

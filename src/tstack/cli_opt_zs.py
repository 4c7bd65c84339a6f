"""`tstack opt tradeoff` and `tstack opt schedule`: zero skipping's accuracy on MiniLM and the dynamic scheduler.

Plain typer command functions; the `tstack opt` app registers them. torch is imported inside the commands.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from tstack.cli_common import parse_ints
from tstack.errors import SpecError
from tstack.report import files, units

console = Console(width=None if Console().is_terminal else 160)  # whole table rows also when piped
TEXTS = ("sentences", "documents")


def _floats(option: str, text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SpecError([f"{option}={text!r} must be comma-separated numbers"]) from None
    if not values:
        raise SpecError([f"{option}={text!r} holds no values"])
    return values


def _policies(text: str) -> list[str]:
    from tstack.kernels.scheduler import POLICIES

    names = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in names if v not in POLICIES]
    if bad or not names:
        raise SpecError([f"--policies={text!r}: {', '.join(bad) or 'no values'} not in {', '.join(POLICIES)}"])
    return names


def _thread_counts(option: str, text: str) -> list[int]:
    """Comma-separated thread counts, each ≥ 1; an empty string gives none."""
    if not text.strip():
        return []
    values = parse_ints(option, text)
    bad = [v for v in values if v < 1]
    if bad:
        raise SpecError([f"{option}={text!r}: {', '.join(map(str, bad))} must be ≥ 1 "
                         "(comma-separated thread counts, or '' for none)"])
    return values


def _distribution_table(dist) -> Table:  # noqa: ANN001
    from tstack.kernels.tradeoff import EDGES

    table = Table(title="attention probabilities (003 Fig. 6)")
    table.add_column("probability", justify="left")
    for col in ("real query, real key", "real query, padded key", "padded query"):
        table.add_column(col, justify="right")
    labels = ["= 0"] + [f"[{lo:g}, {hi:g})" for lo, hi in zip(EDGES[1:-1], EDGES[2:-1])] + [f"[{EDGES[-2]:g}, 1]"]
    labels[1] = f"(0, {EDGES[2]:g})"
    totals = [max(1, sum(c)) for c in (dist.real, dist.padded_key, dist.padded_query)]
    for i, label in enumerate(labels):
        table.add_row(label, *(units.percent(c[i] / n) for c, n in zip((dist.real, dist.padded_key, dist.padded_query), totals)))
    table.add_row("pairs", *(str(sum(c)) for c in (dist.real, dist.padded_key, dist.padded_query)))
    return table


def _points_table(points) -> Table:  # noqa: ANN001
    table = Table(title="skipped work against output change (003 Fig. 7): the tile kernel (fractions of real-key work), "
                        "then per-element skipping (share of real scores dropped)")
    for col in ("score thr", "zero ratio", "p < thr (elements)", "softmax skipped", "w-sum skipped", "V-Gen skipped",
                "cos min", "cos mean", "NN top-1", "NN top-5", "elem. dropped", "elem. cos min", "elem. cos mean"):
        table.add_column(col, justify="right")
    for p in points:
        table.add_row(f"{p.score_threshold:g}", f"{p.zero_ratio:g}", units.percent(p.element_below),
                      units.percent(p.softmax_skipped), units.percent(p.weighted_sum_skipped), units.percent(p.vgen_skipped),
                      f"{p.cosine_min:.6f}", f"{p.cosine_mean:.6f}", units.percent(p.nn_top1), units.percent(p.nn_topk),
                      units.percent(p.element_skipped), f"{p.element_cosine_min:.6f}", f"{p.element_cosine_mean:.6f}")
    return table


def tradeoff(
    model: str = typer.Argument("minilm", help="the real model: minilm (all-MiniLM-L6-v2 from PyPI)"),
    thresholds: str = typer.Option("1e-4,1e-3,3e-3,1e-2", help="score thresholds, comma-separated"),
    zero_ratios: str = typer.Option("1.0", help="V-Gen zero-ratio thresholds, comma-separated (each with every threshold)"),
    texts: str = typer.Option("sentences", help="shipped texts: sentences (a few hundred) | documents (> 512 tokens)"),
    max_length: int = typer.Option(128, help="tokens per text (truncated; 2..512)"),
    batch: int = typer.Option(32, "--batch", "-b", help="texts per batch (padded to the batch's longest)"),
    chunk: int = typer.Option(16, help="tile edge of the skipping kernel (keys and queries); sentences are short"),
    threads: int = typer.Option(1, help="intra-op threads"),
    out: Path | None = typer.Option(None, help="write the distribution and the points as JSON"),
) -> None:
    """Attention-probability distribution and skipped work vs. embedding change on a real model (003 Fig. 6, Fig. 7)."""
    import torch

    from tstack import data
    from tstack.kernels.tradeoff import StudySetup, study
    from tstack.minilm import load_minilm
    from tstack.profiler.runtime import RuntimeConfig, controlled, describe

    if model != "minilm":
        raise SpecError([f"model={model!r} is not one of minilm"])
    if texts not in TEXTS:
        raise SpecError([f"--texts={texts!r} is not one of {', '.join(TEXTS)}"])
    ratios, levels = _floats("--zero-ratios", zero_ratios), _floats("--thresholds", thresholds)
    points = [(0.0, 1.0)] + [(t, r) for r in ratios for t in levels if t > 0]  # threshold 0: the exact reference point
    setup = StudySetup(tuple(data.sentences() if texts == "sentences" else data.documents()), max_length, batch, chunk, threads)
    cfg = RuntimeConfig(threads=threads)
    with files.all_or_nothing([out]) as tmp, controlled(cfg):
        net, tokenizer = load_minilm()
        with torch.no_grad():
            dist, results = study(net, tokenizer, setup, points)
        console.print(describe(cfg))
        if out:
            tmp[out].write_text(json.dumps({"distribution": asdict(dist), "points": [asdict(p) for p in results]}, indent=1))
    console.print(f"{len(setup.texts)} {texts}, ≤ {max_length} tokens, batches of {batch}, tiles {chunk}×{chunk}")
    console.print(_distribution_table(dist))
    console.print(_points_table(results))


def schedule(
    heads: int = typer.Option(16, help="heads (003 §III-C.2: 16)"),
    chunks: int = typer.Option(64, help="key chunks per head (003 §III-C.2: 64)"),
    chunk_keys: int = typer.Option(32, help="keys per chunk (the sequence is chunks × chunk-keys long)"),
    head_dim: int = typer.Option(64, help="head size d"),
    threads: int = typer.Option(2, help="worker threads"),
    threshold: float = typer.Option(1e-3, help="score threshold of zero skipping (0: no skipping, even work)"),
    padding: float = typer.Option(0.25, help="share of padded keys at the end of the sequence"),
    policies: str = typer.Option("head-first,chunk-first,random,dynamic", help="schedulers, comma-separated"),
    repeats: int = typer.Option(3, help="runs per policy, round-robin (median makespan reported)"),
    seed: int = typer.Option(0, help="seed of the synthetic inputs and the random static assignment"),
    replay_threads: str = typer.Option("8,32", help="simulated thread counts of the replay of the measured item times, "
                                                    "comma-separated ('' for no replay)"),
) -> None:
    """Static head-first / chunk-first / random assignment vs the dynamic scheduler: utilization and makespan."""
    from tstack.kernels.scheduler import AttentionWork, item_durations, median_run, repeated_runs, replay, uneven_work
    from tstack.profiler.runtime import RuntimeConfig, controlled, describe

    names = _policies(policies)
    simulated = _thread_counts("--replay-threads", replay_threads)
    if repeats < 1:
        raise SpecError([f"--repeats={repeats} must be ≥ 1"])
    q, k, v, real = uneven_work(heads, chunks, chunk_keys, head_dim, padding, seed)
    cfg = RuntimeConfig(threads=1)
    table = Table(title=f"{heads} heads × {chunks} chunks of {chunk_keys} keys, d={head_dim}, {threads} threads")
    for col in ("threshold", "policy", "utilization", "makespan (median)", "busy per thread", "vs dynamic"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    replayed = Table(title=f"replay of measured item times on {', '.join(map(str, simulated))} simulated threads",
                     caption=f"a simulation, not a run: each item's time is its median over the real {threads}-thread "
                             "runs of all policies above; it leaves out the shared-cache and memory-bandwidth "
                             "contention of more threads")
    for col in ("threshold", "threads", "policy", "utilization", "makespan", "vs dynamic"):
        replayed.add_column(col, justify="left" if col == "policy" else "right")
    with controlled(cfg):
        for t in sorted({0.0, threshold}):
            work = AttentionWork.build(q, k, v, chunk_keys, t, real)
            every = repeated_runs(work, threads, names, repeats, seed)
            runs = {p: median_run(r) for p, r in every.items()}
            dyn = runs.get("dynamic")
            for name in names:
                r = runs[name]
                ratio = f"{r.makespan / dyn.makespan:.2f}×" if dyn else "-"
                table.add_row(f"{t:g}", name, units.percent(r.utilization), units.seconds(r.makespan),
                              " / ".join(units.seconds(b) for b in r.busy()), ratio)
            durations = item_durations([r for rs in every.values() for r in rs])
            for n in simulated:
                sims = {p: replay(durations, heads, chunks, n, p, seed) for p in names}
                sim_dyn = sims.get("dynamic")
                for name, r in sims.items():
                    ratio = f"{r.makespan / sim_dyn.makespan:.2f}×" if sim_dyn and sim_dyn.makespan > 0 else "-"
                    replayed.add_row(f"{t:g}", str(n), name, units.percent(r.utilization), units.seconds(r.makespan),
                                     ratio)
        console.print(describe(cfg) + f"; {threads} worker threads with 1 intra-op thread each")
    console.print(f"{real} real keys of {chunks * chunk_keys}; heads from sharp to flat attention (synthetic, seed {seed})")
    console.print(table)
    if simulated:
        console.print(replayed)

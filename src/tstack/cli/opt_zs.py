"""`tstack opt tradeoff` and `tstack opt schedule`: zero skipping's accuracy on MiniLM and the dynamic scheduler.

Plain typer command functions; the `tstack opt` app registers them. torch is imported inside the commands.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from tstack.cli.common import (
    CSV_OPT,
    JSON_OPT,
    Outputs,
    check_int,
    console,
    need_torch,
    parse_floats,
    parse_ints,
    parse_names,
    progress,
    worker_count,
)
from tstack.errors import SpecError
from tstack.report import output, units

if TYPE_CHECKING:
    from tstack.profiler.memory import MemoryEstimate

out = console()
TEXTS = ("sentences", "documents")
MAX_SEED = 2**32 - 1  # numpy's RNG takes seeds up to 2**32 - 1; torch and random use the same range here
MAX_REPEATS = 1000
MAX_SIZE = 1 << 20  # heads, chunks, keys per chunk, head size: a cap on each, the memory guard bounds them together
MAX_REPLAY_THREADS = 4096
MAX_BATCH = 4096


def below_one(option: str, value: float) -> float:
    """A probability threshold: finite and in [0, 1)."""
    if not (math.isfinite(value) and 0.0 <= value < 1.0):
        raise SpecError([f"{option}={value!r} must be a finite number in [0, 1)"])
    return value


def _probabilities(option: str, text: str) -> list[float]:
    """Comma-separated probability thresholds, each finite and in [0, 1)."""
    try:
        values = parse_floats(option, text, 0.0, 1.0)
    except SpecError:
        values = []
    if not values or any(v >= 1.0 for v in values):
        raise SpecError([f"{option}={text[:60]!r}: give comma-separated finite numbers in [0, 1)"])
    return values


def _thread_counts(option: str, text: str) -> list[int]:
    """Comma-separated thread counts in [1, MAX_REPLAY_THREADS]; an empty string gives none."""
    return parse_ints(option, text, 1, MAX_REPLAY_THREADS) if text.strip() else []


def _distribution(dist) -> list[dict]:
    """One record per probability bin of 003 Fig. 6: its bounds and the pair counts of each kind."""
    from tstack.studies.tradeoff import EDGES

    uppers = [*EDGES[1:-1], 1.0]
    return [{"lower": lo, "upper": hi, "upper_included": i == len(uppers) - 1, "real_pairs": r, "padded_key_pairs": k,
             "padded_query_pairs": q}
            for i, (lo, hi, r, k, q) in enumerate(zip(EDGES[:-1], uppers, dist.real, dist.padded_key,
                                                      dist.padded_query, strict=True))]


def _distribution_table(bins: list[dict]) -> Table:
    table = Table(title="attention probabilities (003 Fig. 6)")
    table.add_column("probability", justify="left")
    kinds = ("real_pairs", "padded_key_pairs", "padded_query_pairs")
    for col in ("real query, real key", "real query, padded key", "padded query"):
        table.add_column(col, justify="right")
    labels = ["= 0"] + [f"[{b['lower']:g}, {b['upper']:g})" for b in bins[1:-1]] + [f"[{bins[-1]['lower']:g}, 1]"]
    labels[1] = f"(0, {bins[1]['upper']:g})"
    totals = [max(1, sum(b[k] for b in bins)) for k in kinds]
    for label, b in zip(labels, bins, strict=True):
        table.add_row(label, *(units.percent(b[k] / n) for k, n in zip(kinds, totals, strict=True)))
    table.add_row("pairs", *(str(sum(b[k] for b in bins)) for k in kinds))
    return table


def _points_table(points: list[dict]) -> Table:
    table = Table(title="skipped work against output change (003 Fig. 7): the tile kernel (fractions of real-key work), "
                        "then per-element skipping (share of real scores dropped)")
    for col in ("score thr", "zero ratio", "p < thr (elements)", "softmax skipped", "w-sum skipped", "V-Gen skipped",
                "cos min", "cos mean", "NN top-1", "NN top-5", "elem. dropped", "elem. cos min", "elem. cos mean"):
        table.add_column(col, justify="right", no_wrap=True)
    for p in points:
        table.add_row(f"{p['score_threshold']:g}", f"{p['zero_ratio']:g}", units.percent(p["element_below"]),
                      units.percent(p["softmax_skipped"]), units.percent(p["weighted_sum_skipped"]),
                      units.percent(p["vgen_skipped"]), f"{p['cosine_min']:.6f}", f"{p['cosine_mean']:.6f}",
                      units.percent(p["nn_top1"]), units.percent(p["nn_topk"]), units.percent(p["element_skipped"]),
                      f"{p['element_cosine_min']:.6f}", f"{p['element_cosine_mean']:.6f}")
    return table


def _tradeoff_estimate(config, texts: int, batch: int, max_length: int):
    """Peak bytes of the study: the exact model keeps every layer's (B, h, S, S) probabilities, and the histogram and
    per-element skipping add about 32 bytes per probability of one layer (int64 bin indices, masks)."""
    from tstack.profiler.memory import MemoryEstimate

    b = min(batch, texts)
    per_layer = b * config.num_attention_heads * max_length * max_length
    peak = per_layer * (4.0 * config.num_hidden_layers + 32.0) + 4.0 * texts * config.hidden_size * 3
    return MemoryEstimate(peak, f"{config.num_hidden_layers} layers of {b} × {config.num_attention_heads} × "
                                f"{max_length} × {max_length} attention probabilities")


def tradeoff(
    model: str = typer.Argument("minilm", help="the real model: minilm (all-MiniLM-L6-v2 from PyPI)"),
    thresholds: str = typer.Option("1e-4,1e-3,3e-3,1e-2", help="score thresholds in [0, 1), comma-separated"),
    zero_ratios: str = typer.Option("1.0", help="V-Gen zero-ratio thresholds in [0, 1], comma-separated (each with "
                                                "every threshold)"),
    texts: str = typer.Option("sentences", help="shipped texts: sentences (a few hundred) | documents (> 512 tokens)"),
    max_texts: int | None = typer.Option(None, help="use only the first N texts (at least 2; default: all)"),
    max_length: int = typer.Option(128, help="tokens per text (truncated; 2..512)"),
    batch: int = typer.Option(32, "--batch", "-b", help="texts per batch (padded to the batch's longest)"),
    chunk: int = typer.Option(16, help="tile edge of the skipping kernel (keys and queries); sentences are short"),
    threads: int = typer.Option(1, help="intra-op threads, at most the cores available"),
    json_out: Path | None = JSON_OPT,
    csv_out: Path | None = CSV_OPT,
) -> None:
    """Attention-probability distribution and skipped work vs. embedding change on a real model (003 Fig. 6, Fig. 7).

    JSON: one record per point, the distribution as the ``distribution`` section; CSV: the points.
    """
    outputs = Outputs(json=json_out, csv=csv_out)
    need_torch()
    if model != "minilm":
        raise SpecError([f"model={model[:60]!r} is not one of minilm"])
    if texts not in TEXTS:
        raise SpecError([f"--texts={texts[:60]!r} is not one of {', '.join(TEXTS)}"])
    levels = _probabilities("--thresholds", thresholds)
    ratios = parse_floats("--zero-ratios", zero_ratios, 0.0, 1.0)
    check_int("--max-texts", max_texts, 2)
    check_int("--max-length", max_length, 2, 512)
    check_int("--batch", batch, 1, MAX_BATCH)
    check_int("--chunk", chunk, 1, 512)
    worker_count("--threads", threads)

    import torch

    from tstack import data
    from tstack.minilm import load_minilm
    from tstack.profiler import memory
    from tstack.profiler.runtime import RuntimeConfig, controlled, describe
    from tstack.studies.tradeoff import StudySetup, study, study_batches

    corpus = data.sentences() if texts == "sentences" else data.documents()
    corpus = corpus[:max_texts] if max_texts else corpus
    points = [(0.0, 1.0)] + [(t, r) for r in ratios for t in levels if t > 0]  # threshold 0: the exact reference point
    setup = StudySetup(texts=tuple(corpus), max_length=max_length, batch=batch, chunk=chunk, threads=threads)
    cfg = RuntimeConfig(threads=threads)
    with controlled(cfg):
        net, tokenizer = load_minilm()
        memory.guard(_tradeoff_estimate(net.config, len(corpus), batch, max_length), "cpu",
                     advice="reduce --batch or --max-length")
        with torch.no_grad(), progress("opt tradeoff", study_batches(setup, points), "batch runs") as advance:
            dist, results = study(net, tokenizer, setup, points, advance)
        runtime = describe(cfg)
    records = [asdict(p) for p in results]
    bins = _distribution(dist)
    run = {"model": model} | output.run_description(thresholds=levels, zero_ratios=ratios, texts=texts, text_count=len(corpus),
                                 max_texts=max_texts, max_length=max_length, batch=batch, chunk=chunk, threads=threads,
                                 runtime=runtime)
    outputs.write(output.document("opt tradeoff", run, records, distribution=bins))
    if outputs.stdout_taken:
        return
    out.print(runtime)
    out.print(f"{len(corpus)} {texts}, ≤ {max_length} tokens, batches of {batch}, tiles {chunk}×{chunk}")
    out.print(_distribution_table(bins))
    out.print(_points_table(records))


def schedule(
    heads: int = typer.Option(16, help="heads (003 §III-C.2: 16)"),
    chunks: int = typer.Option(64, help="key chunks per head (003 §III-C.2: 64)"),
    chunk_keys: int = typer.Option(32, help="keys per chunk (the sequence is chunks × chunk-keys long)"),
    head_dim: int = typer.Option(64, help="head size d (even)"),
    threads: int | None = typer.Option(None, help="worker threads, at most the cores available (default: 2, or 1 on "
                                                  "one core)"),
    threshold: float = typer.Option(1e-3, help="score threshold of zero skipping in [0, 1) (0: no skipping, even "
                                               "work)"),
    padding: float = typer.Option(0.25, help="share of padded keys at the end of the sequence, in [0, 1)"),
    policies: str = typer.Option("head-first,chunk-first,random,dynamic", help="schedulers, comma-separated"),
    repeats: int = typer.Option(3, help="runs per policy, round-robin (median makespan reported)"),
    seed: int = typer.Option(0, help=f"seed of the synthetic inputs and the random static assignment (0..{MAX_SEED})"),
    replay_threads: str = typer.Option("8,32", help="simulated thread counts of the replay of the measured item times, "
                                                    "comma-separated ('' for no replay)"),
    json_out: Path | None = JSON_OPT,
    csv_out: Path | None = CSV_OPT,
) -> None:
    """Static head-first / chunk-first / random assignment vs the dynamic scheduler: utilization and makespan.

    JSON and CSV: one record per (kind, threshold, threads, policy); kind is 'measured' or 'replay' (simulated).
    """
    outputs = Outputs(json=json_out, csv=csv_out)
    need_torch()
    from tstack.kernels.scheduler import POLICIES
    from tstack.profiler import memory

    names = parse_names("--policies", policies, POLICIES)
    simulated = _thread_counts("--replay-threads", replay_threads)
    for option, value in (("--heads", heads), ("--chunks", chunks), ("--chunk-keys", chunk_keys),
                          ("--head-dim", head_dim)):
        check_int(option, value, 1, MAX_SIZE)
    if head_dim % 2 or head_dim < 2:
        raise SpecError([f"--head-dim={head_dim} must be an even number ≥ 2 (cosine and sine position features)"])
    threads = worker_count("--threads", threads if threads is not None else min(2, worker_count("--threads", None)))
    below_one("--threshold", threshold)
    below_one("--padding", padding)
    check_int("--repeats", repeats, 1, MAX_REPEATS)
    check_int("--seed", seed, 0, MAX_SEED)
    thresholds = sorted({0.0, threshold})
    runs = len(names) * (repeats + len(simulated))
    memory.guard(memory_estimate(heads, chunks, chunk_keys, head_dim, threads, runs), "cpu",
                 advice="reduce --heads, --chunks or --chunk-keys")

    from tstack.kernels.scheduler import AttentionWork, item_durations, median_run, replay, scheduled_attention, uneven_work
    from tstack.profiler.runtime import RuntimeConfig, controlled, describe

    q, k, v, real = uneven_work(heads, chunks, chunk_keys, head_dim, padding, seed)
    cfg = RuntimeConfig(threads=1)
    records: list[dict] = []

    def add(kind: str, t: float, n: int, results: dict) -> None:
        base = results.get("dynamic")
        for name, r in results.items():
            busy = r.busy()
            ratio = r.makespan / base.makespan if base is not None and base.makespan > 0 else None
            records.append({"kind": kind, "threshold": t, "threads": n, "policy": name, "utilization": r.utilization,
                            "makespan_seconds": r.makespan, "busy_min_seconds": min(busy),
                            "busy_max_seconds": max(busy), "ratio_to_dynamic": ratio})

    with controlled(cfg), progress("opt schedule", len(thresholds) * (1 + repeats * len(names)), "runs") as advance:
        for t in thresholds:
            work = AttentionWork.build(q, k, v, chunk_keys, t, real)
            scheduled_attention(work, threads, "dynamic", seed)  # warm-up, not kept
            advance(1)
            every: dict[str, list] = {p: [] for p in names}
            for _ in range(repeats):  # round-robin, as kernels.scheduler.repeated_runs
                for p in names:
                    every[p].append(scheduled_attention(work, threads, p, seed)[1])
                    advance(1)
            add("measured", t, threads, {p: median_run(r) for p, r in every.items()})
            durations = item_durations([r for rs in every.values() for r in rs])
            for n in simulated:
                add("replay", t, n, {p: replay(durations, heads, chunks, n, p, seed) for p in names})
        runtime = describe(cfg) + f"; {threads} worker threads with 1 intra-op thread each"
    run = output.run_description(heads=heads, chunks=chunks, chunk_keys=chunk_keys, head_dim=head_dim, threads=threads,
                                 threshold=threshold, padding=padding, policies=names, repeats=repeats, seed=seed,
                                 replay_threads=simulated, real_keys=real, runtime=runtime)
    outputs.write(output.document("opt schedule", run, records))
    if outputs.stdout_taken:
        return
    out.print(runtime)
    out.print(f"{real} real keys of {chunks * chunk_keys}; heads from sharp to flat attention (synthetic, seed {seed})")
    out.print(_schedule_table(records, heads, chunks, chunk_keys, head_dim, threads))
    if simulated:
        out.print(_replay_table(records, simulated, threads))


def _schedule_table(records: list[dict], heads: int, chunks: int, chunk_keys: int, head_dim: int, threads: int) -> Table:
    table = Table(title=f"{heads} heads × {chunks} chunks of {chunk_keys} keys, d={head_dim}, {threads} threads")
    for col in ("threshold", "policy", "utilization", "makespan (median)", "busy per thread (min–max)", "vs dynamic"):
        table.add_column(col, justify="left" if col == "policy" else "right", no_wrap=True)
    for r in records:
        if r["kind"] == "measured":
            table.add_row(f"{r['threshold']:g}", r["policy"], units.percent(r["utilization"]),
                          units.seconds(r["makespan_seconds"]),
                          f"{units.seconds(r['busy_min_seconds'])}–{units.seconds(r['busy_max_seconds'])}",
                          units.ratio(r["ratio_to_dynamic"]))
    return table


def _replay_table(records: list[dict], simulated: list[int], threads: int) -> Table:
    table = Table(title=f"replay of measured item times on {', '.join(map(str, simulated))} simulated threads",
                  caption=f"a simulation, not a run: each item's time is its median over the real {threads}-thread "
                          "runs of all policies above; it leaves out the shared-cache and memory-bandwidth "
                          "contention of more threads")
    for col in ("threshold", "threads", "policy", "utilization", "makespan", "vs dynamic"):
        table.add_column(col, justify="left" if col == "policy" else "right", no_wrap=True)
    for r in records:
        if r["kind"] == "replay":
            table.add_row(f"{r['threshold']:g}", str(r["threads"]), r["policy"], units.percent(r["utilization"]),
                          units.seconds(r["makespan_seconds"]), units.ratio(r["ratio_to_dynamic"]))
    return table


def memory_estimate(heads: int, chunks: int, chunk_keys: int, head_dim: int, threads: int, runs: int) -> MemoryEstimate:
    """Peak bytes of ``uneven_work``, ``AttentionWork.build`` and ``runs`` scheduled runs kept for their item times.

    fp32 tensors: q, k, v and their temporaries (about 6 × h·S·d), one head's S × S scores while building the row
    maxima, the workers' partial outputs (threads × h·S·d) and one item's scores per worker; plus one Python
    ``Interval`` per item of every kept run.
    """
    from tstack.kernels.scheduler import INTERVAL_BYTES
    from tstack.profiler.memory import MemoryEstimate

    s = chunks * chunk_keys
    tensors = 4.0 * (6 * heads * s * head_dim + 2 * s * head_dim + s * s + threads * heads * s * (head_dim + 1)
                     + 4 * threads * s * chunk_keys + 2 * heads * s)
    intervals = float(INTERVAL_BYTES) * heads * chunks * (runs + 1)
    return MemoryEstimate(tensors + intervals, f"{units.si(tensors, 'B')} of tensors at S={s} and "
                                               f"{units.si(intervals, 'B')} of recorded item intervals")

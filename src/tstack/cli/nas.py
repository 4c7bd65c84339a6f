"""`tstack nas`: hardware-aware neural architecture search (000 §IV): train a supernet, search it, plot the fronts.

torch is imported inside `train` (and by the perplexity evaluator), so `tstack --help` stays fast.
Record fields carry their unit: ``latency_seconds``, ``joules``, ``joule_seconds`` (EDP), ``train_seconds``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from tstack.cli.common import (
    CSV_OPT,
    JSON_OPT,
    PLOT_OPT,
    Outputs,
    check_choice,
    check_float,
    check_int,
    console,
    duration,
    need_torch,
    parse_names,
    progress,
    worker_count,
)
from tstack.costmodel.backend import load_target
from tstack.errors import SpecError
from tstack.nas.corpus import CORPORA
from tstack.parallel import EXECUTORS
from tstack.report import output, units
from tstack.search import nas

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="hardware-aware NAS (000 §IV): train a weight-sharing supernet, search it, plot the fronts.")
out = console()
MAX_STEPS = 10_000_000
MAX_BUDGET = 100_000  # perplexity evaluations of one search
SPACE_HELP = "search space preset (paper, paper-small) or a space .yaml file"


def _subnet_record(a: nas.Arch, **fields: Any) -> dict[str, Any]:
    return {"subnet": a.label, "layers": a.layers, "heads": a.heads, "hidden": a.hidden, "ffn": a.ffn, **fields}


@app.command()
def train(
    space: str = typer.Option("paper-small", "--space", help=SPACE_HELP),
    corpus: str = typer.Option("web", "--corpus", help="web (World English Bible, 4 MB, the default) or shipped "
                                                       "(tstack's 41 KB of documents; for quick tries)"),
    steps: int = typer.Option(2000, "--steps", help="optimizer steps (each trains largest, smallest and random subnets)"),
    out_path: Path = typer.Option(..., "--out", help="checkpoint file (written every --checkpoint-every steps)"),
    batch: int | None = typer.Option(None, "--batch", help="sequences per step (default: the space's)"),
    lr: float | None = typer.Option(None, "--lr", help="peak learning rate (default: the space's)"),
    warmup: int = typer.Option(50, "--warmup", help="steps of linear warm-up before the linear decay"),
    random_subnets: int = typer.Option(0, "--random-subnets", help="random subnets per step besides largest and smallest "
                                                                 "(docs/nas.md: more trained worse here)"),
    checkpoint_every: int = typer.Option(500, "--checkpoint-every", help="steps between checkpoints"),
    stop_after: int | None = typer.Option(None, "--stop-after", help="end this run after N steps (resume later)"),
    resume: bool = typer.Option(False, "--resume", help="continue the run that --out holds"),
    max_bytes: int | None = typer.Option(None, "--max-bytes", help="use only the first N bytes of the corpus"),
    eval_windows: int | None = typer.Option(None, "--eval-windows", help="validation windows for the final "
                                                                        "perplexities (default: all)"),
    seed: int = typer.Option(0, "--seed"),
    json_path: Path | None = JSON_OPT,
    csv_path: Path | None = CSV_OPT,
) -> None:
    """Train the weight-sharing supernet (BigNAS sandwich rule, in-place distillation) and report the largest and
    smallest subnet's validation perplexity."""
    sp = nas.load_space(space)
    check_choice("--corpus", corpus, CORPORA)
    check_int("--steps", steps, 1, MAX_STEPS)
    batch = check_int("--batch", batch if batch is not None else sp.batch, 1, 4096)
    lr = check_float("--lr", lr if lr is not None else sp.lr, 1e-9, 1.0)
    check_int("--warmup", warmup, 0, MAX_STEPS)
    check_int("--random-subnets", random_subnets, 0, 64)
    check_int("--checkpoint-every", checkpoint_every, 1, MAX_STEPS)
    check_int("--stop-after", stop_after, 1, MAX_STEPS)
    check_int("--max-bytes", max_bytes, 2 * sp.seq + 4, 1 << 40)
    check_int("--eval-windows", eval_windows, 1, MAX_STEPS)
    check_int("--seed", seed, 0, 2**31 - 1)
    outputs = Outputs(json_path, csv_path, out=out_path)
    need_torch()
    from tstack.nas import corpus as corpora
    from tstack.nas import train as tr

    text = corpora.load(corpus, max_bytes)
    config = tr.TrainConfig(steps=steps, batch=batch, lr=lr, warmup=warmup, random_subnets=random_subnets,
                            checkpoint_every=checkpoint_every, seed=seed, corpus=corpus, max_bytes=max_bytes)
    state = tr.load_checkpoint(out_path, tr.device()) if resume else None
    done = state["step"] if state is not None else 0
    todo = steps - done if stop_after is None else min(steps - done, stop_after)
    with progress("train", todo, "steps") as advance:
        net, log = tr.train(sp, text, config, out_path, resume=state, stop_after=stop_after,
                            progress=lambda n, loss: advance(n))
    start = time.perf_counter()
    records = [_subnet_record(a, role=role, perplexity=tr.perplexity(net, a, text.validation, eval_windows))
               for role, a in (("largest", sp.largest), ("smallest", sp.smallest))]
    eval_s = time.perf_counter() - start
    summary = {"steps_done": log.step, "train_seconds": log.train_seconds, "this_run_seconds": log.seconds,
               "eval_seconds": eval_s, "device": str(tr.device()), "train_tokens": int(len(text.train)),
               "validation_tokens": int(len(text.validation)),
               "final_largest_loss": log.losses[-1][0] if log.losses else None}
    run = {"space": sp.to_dict(), "corpus": corpus, "tokenizer": "bytes (UTF-8, vocabulary 256)", "out": str(out_path),
           "config": config.__dict__, "resume": resume}
    outputs.write(output.document("nas train", run, records, summary))
    if outputs.stdout_taken:
        return
    t = Table(title=f"supernet {sp.name}: {log.step}/{steps} steps in {duration(log.train_seconds)} "
                    f"on {summary['device']}")
    for c in ("subnet", "role", "perplexity"):
        t.add_column(c)
    for r in records:
        t.add_row(r["subnet"], r["role"], f"{r['perplexity']:.3f}")
    out.print(t)


def _candidate_record(algorithm: str, c: nas.Candidate, index: int, on_front: bool) -> dict[str, Any]:
    return _subnet_record(c.arch, algorithm=algorithm, evaluation=index, perplexity=c.perplexity,
                          latency_seconds=c.cost.latency_s, joules=c.cost.joules, joule_seconds=c.cost.edp,
                          weight_bytes=c.weight_bytes, pareto=on_front)


@app.command()
def search(
    checkpoint: Path = typer.Argument(..., help="a supernet checkpoint written by `tstack nas train`"),
    hw: str = typer.Option("gemmini-ibert", "--hw", help="hardware target: accelerator or device preset, or a .yaml"),
    objective: str = typer.Option("edp", "--objective", help=f"hardware objective: {', '.join(nas.OBJECTIVES)}"),
    algorithm: str = typer.Option("evolution", "--algorithm", help=f"comma-separated: {', '.join(nas.ALGORITHMS)}"),
    iterations: int = typer.Option(40, "--iterations", help="generations of the evolution and NSGA-II"),
    population: int = typer.Option(40, "--population", help="subnets per generation"),
    mutation: float = typer.Option(0.2, "--mutation", help="probability that a dimension is redrawn"),
    budget: int | None = typer.Option(None, "--budget", help="perplexity evaluations at most (default: population x "
                                                             "iterations); the other algorithms get what the first used"),
    cost: str = typer.Option("lut", "--cost", help="lut (000's per-operation lookup table) or direct"),
    max_latency: float | None = typer.Option(None, "--max-latency", help="constraint: seconds per inference"),
    max_energy: float | None = typer.Option(None, "--max-energy", help="constraint: joules per inference"),
    max_weight_bytes: float | None = typer.Option(None, "--max-weight-bytes", help="constraint: weight memory, bytes"),
    eval_windows: int = typer.Option(16, "--eval-windows", help="validation windows (of the space's sequence length) "
                                                              "per perplexity"),
    executor: str = typer.Option("process", "--executor", help=f"parallel map for perplexities: {', '.join(EXECUTORS)}"),
    workers: int | None = typer.Option(None, "--workers", help="worker processes (default: the cores available)"),
    seed: int = typer.Option(0, "--seed"),
    json_path: Path | None = JSON_OPT,
    csv_path: Path | None = CSV_OPT,
    plot: Path | None = PLOT_OPT,
) -> None:
    """Search a trained supernet for subnets Pareto-optimal in hardware cost and perplexity (000 §IV)."""
    check_choice("--objective", objective, nas.OBJECTIVES)
    algorithms = parse_names("--algorithm", algorithm, nas.ALGORITHMS)
    check_int("--iterations", iterations, 1, 100_000)
    check_int("--population", population, 2, 100_000)
    check_float("--mutation", mutation, 0.0, 1.0)
    budget = check_int("--budget", budget if budget is not None else min(MAX_BUDGET, population * iterations), 1,
                       MAX_BUDGET)
    check_choice("--cost", cost, ("lut", "direct"))
    for option, value in (("--max-latency", max_latency), ("--max-energy", max_energy),
                          ("--max-weight-bytes", max_weight_bytes)):
        if value is not None:
            check_float(option, value, 0.0)
    check_int("--eval-windows", eval_windows, 1, 1_000_000)
    check_choice("--executor", executor, EXECUTORS)
    workers = worker_count("--workers", workers)
    check_int("--seed", seed, 0, 2**31 - 1)
    outputs = Outputs(json_path, csv_path, plot)
    target = load_target(hw)
    need_torch()
    from tstack.nas.train import PerplexityEvaluator, load_checkpoint

    space = nas.space_from_dict(load_checkpoint(checkpoint)["space"])
    evaluator = PerplexityEvaluator(str(checkpoint.resolve()), eval_windows)
    lut = nas.Lut(space, target)
    start = time.perf_counter()
    lut.fill_space()
    lut_fill_s = time.perf_counter() - start
    hw_cost = lut.cost if cost == "lut" else (lambda a: nas.direct_cost(space, a, target))
    base_arch = space.largest
    base_cost = hw_cost(base_arch)
    if objective != "latency" and math.isnan(base_cost.joules):
        raise SpecError([f"--objective={objective}: hardware {target.name!r} models no energy; use --objective "
                         "latency or an accelerator (e.g. gemmini-ibert)"])
    baseline = nas.Candidate(base_arch, evaluator(base_arch), base_cost, nas.weight_bytes(space, base_arch, target))
    constraints = nas.Constraints(max_latency, max_energy, max_weight_bytes)
    results: list[nas.SearchResult] = []
    _search_all(results, algorithms, space, hw_cost, evaluator, budget, constraints, target, executor, workers,
                objective, population, iterations, mutation, seed)
    records, reductions, summary = [], [], {"lut_fill_seconds": lut_fill_s, "lut_rows": len(lut)}
    for r in results:
        front = {c.arch for c in r.front}
        records += [_candidate_record(r.algorithm, c, k, c.arch in front) for k, c in enumerate(r.candidates)]
        reductions += [{"algorithm": r.algorithm, **row} for row in nas.reductions(r.front + [baseline], baseline)]
        summary[r.algorithm] = {"seconds": r.seconds, "evaluations": len(r.candidates), "front": len(r.front),
                                "generations": r.generations, "skipped": len(r.skipped),
                                "skipped_reasons": sorted(set(r.skipped.values()))[:5]}
    summary["lut_vs_direct"] = _lut_vs_direct(space, target, lut, [c.arch for r in results for c in r.front])
    run = {"checkpoint": str(checkpoint), "space": space.to_dict(), "hw": target.name, "objective": objective,
           "algorithms": algorithms, "iterations": iterations, "population": population, "mutation": mutation,
           "budget": budget, "cost": cost, "constraints": constraints.__dict__, "eval_windows": eval_windows,
           "executor": executor, "workers": workers, "seed": seed}
    base = _candidate_record("baseline", baseline, 0, True)
    doc = output.document("nas search", run, records, summary, baseline=base, reductions=reductions)
    from tstack.report import nas_figures

    outputs.write(doc, figure=lambda p: nas_figures.fig4(doc, p, outputs.plot_format))
    if outputs.stdout_taken:
        return
    t = Table(title=f"search on {target.name} ({objective} vs perplexity), baseline {base_arch.label}: perplexity "
                    f"{baseline.perplexity:.3f}, {units.seconds(base_cost.latency_s)}")
    for c in ("algorithm", "evaluations", "generations", "skipped", "front", "wall"):
        t.add_column(c)
    for r in results:
        t.add_row(r.algorithm, str(len(r.candidates)), str(r.generations), str(len(r.skipped)), str(len(r.front)),
                  units.seconds(r.seconds))
    out.print(t)
    nas_figures.print_reductions(out, doc)


def _search_all(results: list[nas.SearchResult], algorithms: list[str], space: nas.Space, hw_cost: Any, evaluator: Any,
                budget: int, constraints: nas.Constraints, target: Any, executor: str, workers: int, objective: str,
                population: int, iterations: int, mutation: float, seed: int) -> None:
    """Each algorithm in turn; those after the first get the number of evaluations the first used."""
    for i, name in enumerate(algorithms):
        used = budget if i == 0 else len(results[0].candidates)
        gens = iterations if i == 0 else 10 * iterations  # followers run until they used the first one's budget
        start = time.perf_counter()
        with progress(f"search ({name})", used, "evaluations") as advance:
            ev = nas.Evaluator(space, hw_cost, evaluator, used, constraints,
                               weights=lambda a: nas.weight_bytes(space, a, target), executor=executor,
                               workers=workers, progress=advance)
            r = _run(name, ev, objective, population, gens, mutation, seed)
        r.seconds = time.perf_counter() - start
        results.append(r)


def _run(name: str, ev: nas.Evaluator, objective: str, population: int, iterations: int, mutation: float,
         seed: int) -> nas.SearchResult:
    if name == "evolution":
        return nas.evolution(ev, objective, population, iterations, mutation, seed)
    if name == "nsga2":
        return nas.nsga2(ev, objective, population, iterations, mutation, seed)
    return nas.random_search(ev, objective, seed)


def _lut_vs_direct(space: nas.Space, target: Any, lut: nas.Lut, archs: list[nas.Arch]) -> dict[str, Any]:
    """The largest relative difference between the lookup table and direct costing, and what each costs."""
    archs = sorted(set(archs))
    if not archs:
        return {}
    start = time.perf_counter()
    direct = [nas.direct_cost(space, a, target) for a in archs]
    direct_s = (time.perf_counter() - start) / len(archs)
    start = time.perf_counter()
    table = [lut.cost(a) for a in archs]
    lut_s = (time.perf_counter() - start) / len(archs)
    worst = max(max(abs(d.latency_s - t.latency_s) / d.latency_s,
                    abs(d.joules - t.joules) / d.joules if math.isfinite(d.joules) else 0.0)
                for d, t in zip(direct, table))
    return {"subnets": len(archs), "max_relative_difference": worst, "direct_seconds_per_subnet": direct_s,
            "lut_seconds_per_subnet": lut_s}


@app.command()
def plot(
    result: Path = typer.Argument(..., help="a JSON document written by `tstack nas search --json`"),
    out_path: Path = typer.Option(..., "--out", help="figure file (.png, .svg or .pdf)"),
    json_path: Path | None = JSON_OPT,
    csv_path: Path | None = CSV_OPT,
) -> None:
    """Draw 000 Fig. 4 (EDP, latency, energy vs perplexity) from a search result; print and write the reductions at
    +0.1 and +1 perplexity next to the paper's."""
    from tstack.report import files, nas_figures

    outputs = Outputs(json_path, csv_path, out=out_path)
    files.check_figure_format("--out", out_path)
    doc = _read_result(result)
    records = [{k: r[k] for k in ("algorithm", "metric", "perplexity_delta", "reduction", "paper_reduction", "subnet",
                                  "perplexity")} for r in doc["reductions"]]
    outputs.write(output.document("nas plot", {"result": str(result), "out": str(out_path)}, records),
                  extra={"--out": lambda p: nas_figures.fig4(doc, p)})
    if not outputs.stdout_taken:
        nas_figures.print_reductions(out, doc)


@app.command()
def measure(
    result: Path = typer.Argument(..., help="a JSON document written by `tstack nas search --json`"),
    device: str = typer.Option(..., "--device", "-d", help="device preset or .yaml that predicts this CPU (e.g. the "
                                                          "file `tstack calibrate` writes)"),
    algorithm: str = typer.Option("evolution", "--algorithm", help="whose Pareto front to measure"),
    threads: int = typer.Option(1, "--threads", help="intra-op threads"),
    repeats: int = typer.Option(10, "--repeats", help="timed samples per subnet"),
    json_path: Path | None = JSON_OPT,
    csv_path: Path | None = CSV_OPT,
) -> None:
    """Measure the Pareto subnets' real forward latency on this CPU and set it against a device's prediction."""
    check_choice("--algorithm", algorithm, nas.ALGORITHMS)
    check_int("--threads", threads, 1, 4096)
    check_int("--repeats", repeats, 1, 10_000)
    outputs = Outputs(json_path, csv_path)
    target = load_target(device)
    doc = _read_result(result)
    need_torch()
    from scipy.stats import spearmanr

    from tstack.nas.measure import measure as measure_subnets

    space = nas.space_from_dict(doc["run"]["space"])
    archs = sorted({nas.Arch(r["layers"], r["heads"], r["hidden"], r["ffn"]) for r in doc["records"]
                    if r["algorithm"] == algorithm and r["pareto"]})
    if not archs:
        raise SpecError([f"--algorithm={algorithm!r}: RESULT has no Pareto subnets of that algorithm"])
    timings = measure_subnets(doc["run"]["checkpoint"], archs, threads, repeats=repeats)
    records = []
    for a, t in zip(archs, timings):
        predicted = nas.direct_cost(space, a, target).latency_s
        records.append(_subnet_record(a, measured_seconds=t.median, predicted_seconds=predicted,
                                      relative_error=(predicted - t.median) / t.median))
    rho = spearmanr([r["measured_seconds"] for r in records], [r["predicted_seconds"] for r in records])[0]
    errors = sorted(abs(r["relative_error"]) for r in records)
    summary = {"subnets": len(records), "spearman": float(rho) if len(records) > 1 else None,
               "median_abs_relative_error": errors[len(errors) // 2]}
    run = {"result": str(result), "device": target.name, "algorithm": algorithm, "threads": threads, "repeats": repeats}
    outputs.write(output.document("nas measure", run, records, summary))
    if outputs.stdout_taken:
        return
    t = Table(title=f"{algorithm} front on this CPU ({threads} thread(s)) vs {target.name}: Spearman "
                    f"{summary['spearman'] if summary['spearman'] is None else round(summary['spearman'], 3)}")
    for c in ("subnet", "measured", "predicted", "error"):
        t.add_column(c)
    for r in records:
        t.add_row(r["subnet"], units.seconds(r["measured_seconds"]), units.seconds(r["predicted_seconds"]),
                  units.percent(r["relative_error"]))
    out.print(t)


MAX_RESULT_BYTES = 1 << 28


def _read_result(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SpecError([f"RESULT={str(path)[:200]!r} does not exist or is not a file"])
    if path.stat().st_size > MAX_RESULT_BYTES:
        raise SpecError([f"RESULT={str(path)[:200]!r} is over {MAX_RESULT_BYTES} bytes"])
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise SpecError([f"RESULT={str(path)[:200]!r} is not JSON ({str(e)[:80]})"]) from None
    if not isinstance(doc, dict) or doc.get("command") != "nas search" or "baseline" not in doc:
        raise SpecError([f"RESULT={str(path)[:200]!r} is not a `tstack nas search --json` document"])
    return doc

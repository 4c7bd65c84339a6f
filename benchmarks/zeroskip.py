"""Zero skipping and the dynamic scheduler, measured (003 §III-C): attention time vs SDPA on MiniLM at 512 tokens.

Run: nice -n 19 python benchmarks/zeroskip.py [--threads 1] [--docs 2] [--repeats 5] [--sections minilm,bound,banded,scheduler]

Prints, under ``controlled(RuntimeConfig(threads))``:
1. MiniLM (all-MiniLM-L6-v2) on the shipped documents truncated to 512 tokens: the time of the six layers' attention
   (V-Gen + QKᵀ + softmax + PV) for the exact eager path, ``F.scaled_dot_product_attention`` and the tile-skipping
   kernel at a few score thresholds; the ratio to SDPA, the skipped fractions and the sentence-embedding cosine to the
   exact model per threshold.
   Then the bound on any skipping kernel that computes every score: the same run times V-Gen, QKᵀ, the row maxima,
   the exponents with their row sums and P·V separately; per-element skipping (``ElementSkipSelfAttention``) gives
   the share f of scores it may drop and the embedding cosine it costs, for both of its criteria (``bound``: what a
   kernel can test, e^(s − m) < t; ``probability``: the paper's p < t, an oracle); a kernel skipping that share of the exponent
   and P·V work for free takes at least V-Gen + QKᵀ + max + (1 − f)(exp + P·V), and one that also knew, without
   computing them, which scores to skip (an oracle) at least (1 − g)·V-Gen + (1 − f)(QKᵀ + max + exp + P·V), where
   g is the share of V rows that no query keeps.
2. The same timings on a synthetic banded attention (12 heads, 512 tokens) whose far tiles are skippable: what the
   kernel gains when the attention is block-sparse, and the dense fallback vs the gathering path.
3. The scheduler: static head-first / chunk-first / random vs dynamic on (head, chunk) items made uneven by skipping,
   on real worker threads, then replayed on 8 and 32 simulated threads from the measured item times.
"""

from __future__ import annotations

import argparse
import math
import sys

import torch
import torch.nn.functional as F

from tstack.data import documents
from tstack.kernels.scheduler import POLICIES, AttentionWork, item_durations, median_run, repeated_runs, replay, uneven_work
from tstack.kernels.zeroskip import EXP_FLOOR, SPARSE_MIN_SKIPPED, ZSParams, zs_attention
from tstack.minilm import embed_batches, encode, load_minilm
from tstack.profiler.runtime import RuntimeConfig, controlled, describe, reexec_with_malloc_policy
from tstack.profiler.timing import time_callable
from tstack.report import units
from tstack.studies.tradeoff import CRITERIA, element_skipping, zero_skipping

THRESHOLDS = (0.0, 1e-4, 1e-3, 1e-2)
ELEMENT_THRESHOLDS = (1e-4, 1.5e-4, 2e-4, 3e-4, 1e-3)
COSINE_GOAL = 0.9999
SECTIONS = ("minilm", "bound", "banded", "scheduler")
REPLAY_THREADS = (8, 32)  # the paper's 32 threads, simulated from the measured item times


def capture_layers(model, batch) -> list[tuple]:
    """Per encoder layer: (hidden input (B, S, H), q (B, h, S, d), k, value nn.Linear) from one exact forward pass."""
    captured = []

    def hook(module, args, kwargs, out):
        x = args[0]
        b, s, _ = x.shape
        h, d = module.num_attention_heads, module.attention_head_size
        q = module.query(x).view(b, s, h, d).transpose(1, 2).contiguous()  # (B, h, S, d)
        k = module.key(x).view(b, s, h, d).transpose(1, 2).contiguous()
        captured.append((x, q, k, module.value))

    handles = [layer.attention.self.register_forward_hook(hook, with_kwargs=True) for layer in model.encoder.layer]
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def variants(layers, params: list[ZSParams]) -> dict[str, callable]:
    """Callables running every layer's attention (V-Gen included) one way."""
    def eager():
        for x, q, k, value in layers:
            b, h, s, d = q.shape
            v = value(x).view(b, s, h, d).transpose(1, 2)
            torch.softmax((q @ k.transpose(-1, -2)) * d ** -0.5, -1) @ v

    def sdpa():
        for x, q, k, value in layers:
            b, h, s, d = q.shape
            F.scaled_dot_product_attention(q, k, value(x).view(b, s, h, d).transpose(1, 2))

    def skipping(p, least):
        return lambda: [zs_attention(q, k, x, value.weight, value.bias, None, p, min_skipped=least) for x, q, k, value in layers]

    out = {"eager": eager, "sdpa": sdpa} | {f"zs t={p.score_threshold:g} c={p.chunk}": skipping(p, SPARSE_MIN_SKIPPED)
                                            for p in params}
    # the gathering path even where the kernel would fall back to running every tile
    return out | {f"zs t={p.score_threshold:g} c={p.chunk} gather": skipping(p, 0.0) for p in params if p.score_threshold}


def time_all(fns: dict, cfg: RuntimeConfig, repeats: int) -> dict[str, float]:
    """Median seconds per variant, variants timed round-robin (one time_callable sample each per round)."""
    samples: dict[str, list[float]] = {n: [] for n in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name].append(time_callable(fn, cfg, warmup=1, repeats=1).median)
    return {n: sorted(s)[len(s) // 2] for n, s in samples.items()}


def skipped(layers, p: ZSParams) -> tuple[float, float, float]:
    """Tile-count-weighted skippable fractions (softmax, weighted sum, V-Gen) over the layers (gathering path)."""
    stats = [zs_attention(q, k, x, value.weight, value.bias, None, p, min_skipped=0.0)[1] for x, q, k, value in layers]
    total = sum(s.blocks for s in stats)
    return tuple(sum(s.blocks * getattr(s, f) for s in stats) / total
                 for f in ("softmax_skipped", "weighted_sum_skipped", "vgen_skipped"))


def print_times(title: str, times: dict[str, float], extra: dict[str, str]) -> None:
    print(title)
    ref = times["sdpa"]
    for name, t in times.items():
        print(f"  {name:<22} {units.seconds(t):>9}  sdpa/this {ref / t:5.2f}×  {extra.get(name, '')}")


def components(layers) -> tuple[dict[str, callable], int]:
    """Callables timing each part of the six layers' attention on its own, at its fastest, and the head count.

    Inputs are precomputed and outputs preallocated; the attention parts run on one head per layer (1 MiB of scores,
    resident in the L2 as in a fused kernel's tiles) and count ×heads; V-Gen runs whole (its 0.6 MB of weights fit).
    The subtraction of the row maximum (floored at ``EXP_FLOOR``, as the kernels do) is precomputed: a fused kernel
    folds it into the exponent. So the bound built from these times is optimistic for any kernel.
    """
    parts = []
    with torch.no_grad():
        for x, q, k, value in layers:
            b, h, s, d = q.shape
            qs, kt = q[:, :1] * d ** -0.5, k[:, :1].transpose(-1, -2)  # one head
            scores = qs @ kt
            m = scores.amax(-1, keepdim=True)
            shifted = (scores - m).clamp_min_(EXP_FLOOR)
            e = shifted.exp()
            v = value(x).view(b, s, h, d)[:, :, :1].transpose(1, 2).contiguous()
            parts.append(dict(x=x[0], w=value.weight.detach().T, bias=value.bias.detach(), vgen=torch.empty(s, h * d),
                              qs=qs, kt=kt, scores=scores, m=m.squeeze(-1).clone(), shifted=shifted, e=e,
                              sums=torch.empty(b, 1, s), v=v, out=torch.empty(b, 1, s, d)))

    def each(fn):
        return lambda: [fn(p) for p in parts]

    return {
        "V-Gen": each(lambda p: torch.addmm(p["bias"], p["x"], p["w"], out=p["vgen"])),
        "QKᵀ": each(lambda p: torch.matmul(p["qs"], p["kt"], out=p["scores"])),
        "row max": each(lambda p: torch.amax(p["scores"], -1, out=p["m"])),
        "exp + row sum": each(lambda p: torch.sum(torch.exp(p["shifted"], out=p["e"]), -1, out=p["sums"])),
        "P·V": each(lambda p: torch.matmul(p["e"], p["v"], out=p["out"])),
    }, layers[0][1].shape[1]


def bound_section(cfg: RuntimeConfig, repeats: int) -> None:
    """The time no score-computing skipping kernel can beat, at the share of scores the accuracy goal lets it drop.

    Accuracy over every shipped document at 512 tokens; times on the first one.
    """
    model, tokenizer = load_minilm()
    batches = [encode(tokenizer, [t], 512) for t in documents()]
    element = {}
    with torch.no_grad():
        exact = embed_batches(model, batches)
        layers = capture_layers(model, batches[0])
        for criterion in CRITERIA:
            for t in ELEMENT_THRESHOLDS:
                with element_skipping(model, t, criterion) as modules:
                    e = embed_batches(model, batches)
                dropped, pairs, dead, columns = (sum(c) for c in zip(*(n for m in modules for n in m.counts)))
                element[criterion, t] = (dropped / pairs, dead / columns, float((e * exact).sum(-1).min()))
        parts, heads = components(layers)
        times = time_all({"sdpa": variants(layers, [])["sdpa"]} | parts, cfg, repeats)
    times |= {n: t * heads for n, t in times.items() if n not in ("sdpa", "V-Gen")}
    print(f"MiniLM document 0 ({batches[0]['input_ids'].shape[1]} tokens): parts of the six layers' attention, "
          f"each timed alone in the same run (attention parts on one head per layer, ×{heads}):")
    for name, t in times.items():
        print(f"  {name:<14} {units.seconds(t):>9}")
    fixed = times["V-Gen"] + times["QKᵀ"] + times["row max"]
    skippable = times["exp + row sum"] + times["P·V"]
    print(f"per-element skipping over {len(batches)} documents (dropped share of real scores, min cosine) and the fastest a "
          f"kernel could be at that share (goal: cosine ≥ {COSINE_GOAL}):")
    for (criterion, t), (f, g, cos) in element.items():
        bound = fixed + (1 - f) * skippable
        oracle = (1 - g) * times["V-Gen"] + (1 - f) * (fixed - times["V-Gen"] + skippable)
        mark = "meets" if cos >= COSINE_GOAL else "misses"
        print(f"  {criterion:<11} t={t:<7g} dropped {units.percent(f):>6} (V rows {units.percent(g):>6})  "
              f"min cosine {cos:.6f} ({mark})  bound {units.seconds(bound):>9} sdpa/bound {times['sdpa'] / bound:4.2f}×  "
              f"oracle {units.seconds(oracle):>9} sdpa/oracle {times['sdpa'] / oracle:4.2f}×")


def minilm_section(cfg: RuntimeConfig, docs: int, repeats: int, chunks: tuple[int, ...]) -> None:
    model, tokenizer = load_minilm()
    texts = documents()[:docs]
    batches = [encode(tokenizer, [t], 512) for t in texts]
    params = [ZSParams(t, 1.0, c, cfg.threads) for c in chunks for t in THRESHOLDS]
    with torch.no_grad():
        exact = embed_batches(model, batches)
        cosines = {}
        for p in params:
            with zero_skipping(model, p, min_skipped=0.0):
                e = embed_batches(model, batches)
            cosines[f"zs t={p.score_threshold:g} c={p.chunk}"] = float((e * exact).sum(-1).min())
        for i, batch in enumerate(batches):
            layers = capture_layers(model, batch)
            times = time_all(variants(layers, params), cfg, repeats)
            extra = {}
            for p in params:
                name = f"zs t={p.score_threshold:g} c={p.chunk}"
                sm, ws, vg = skipped(layers, p)
                extra[name] = (f"skipped softmax {units.percent(sm)}, w-sum {units.percent(ws)}, V-Gen {units.percent(vg)}; "
                               f"min cosine (all docs) {cosines[name]:.6f}")
            print_times(f"MiniLM document {i} ({batch['input_ids'].shape[1]} tokens), 6 layers of attention incl. V-Gen:",
                        times, extra)


def banded_layers(sharp: float, s: int = 512, h: int = 12, d: int = 32) -> list[tuple]:
    """One synthetic layer: queries and keys on position features, so attention is a band around the diagonal."""
    gen = torch.Generator().manual_seed(0)
    pos = torch.arange(s, dtype=torch.float32)
    freqs = torch.linspace(0.5 / s, 0.3, d // 2)
    feat = torch.cat([torch.cos(pos[:, None] * freqs), torch.sin(pos[:, None] * freqs)], -1)  # (S, d)
    q = (sharp * feat + 0.1 * torch.randn(h, s, d, generator=gen)).unsqueeze(0)  # (1, h, S, d)
    k = feat.expand(1, h, s, d).contiguous()
    value = torch.nn.Linear(h * d, h * d)
    return [(torch.randn(1, s, h * d, generator=gen), q, k, value)]


def banded_section(cfg: RuntimeConfig, repeats: int) -> None:
    params = [ZSParams(t, 1.0, c, cfg.threads) for c in (32, 64) for t in (0.0, 1e-3)]
    with torch.no_grad():
        for sharp in (1.0, 4.0):
            layers = banded_layers(sharp)
            times = time_all(variants(layers, params), cfg, repeats)
            extra = {f"zs t={p.score_threshold:g} c={p.chunk}": f"skippable softmax {skipped(layers, p)[0]:.1%}"
                     for p in params}
            print_times(f"synthetic banded attention, sharpness {sharp} (12 heads, 512 tokens, d=32):", times, extra)


def scheduler_section(threads: int, repeats: int) -> None:
    q, k, v, real = uneven_work(16, 64, 32, 64, 0.25)
    print(f"scheduler: 16 heads × 64 chunks of 32 keys, d=64, {real} real keys of 2048, {threads} worker threads")
    for t in (0.0, 1e-3):
        every = repeated_runs(AttentionWork.build(q, k, v, 32, t, real), threads, POLICIES, repeats)
        runs = {p: median_run(r) for p, r in every.items()}
        for name in POLICIES:
            r = runs[name]
            busy = " / ".join(units.seconds(b) for b in r.busy())
            ratio = r.makespan / runs["dynamic"].makespan
            print(f"  threshold {t:<6g} {name:<12} utilization {units.percent(r.utilization):>6}  "
                  f"makespan {units.seconds(r.makespan):>8}  busy {busy}  makespan/dynamic {ratio:.2f}")
        durations = item_durations([r for rs in every.values() for r in rs])
        for n in REPLAY_THREADS:
            sims = {p: replay(durations, 16, 64, n, p) for p in POLICIES}
            print(f"  threshold {t:<6g} replay on {n} simulated threads (measured item times): " + ", ".join(
                f"{p} {units.percent(r.utilization)} ({r.makespan / sims['dynamic'].makespan:.2f}×)"
                for p, r in sims.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--docs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunks", default="64,128")
    parser.add_argument("--sched-threads", type=int, default=2)
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}")
    args = parser.parse_args()
    reexec_with_malloc_policy(sys.argv)
    sections = [v for v in args.sections.split(",") if v]
    bad = [v for v in sections if v not in SECTIONS]
    if bad or not sections:
        parser.error(f"--sections={args.sections!r}: {', '.join(bad) or 'no values'} not in {', '.join(SECTIONS)}")
    cfg = RuntimeConfig(threads=args.threads)
    run = {"minilm": lambda: minilm_section(cfg, args.docs, args.repeats, tuple(int(c) for c in args.chunks.split(","))),
           "bound": lambda: bound_section(cfg, args.repeats),
           "banded": lambda: banded_section(cfg, args.repeats),
           "scheduler": lambda: scheduler_section(args.sched_threads, max(1, math.ceil(args.repeats / 2)))}
    with controlled(cfg):
        print(describe(cfg))
        for name in sections:
            run[name]()


if __name__ == "__main__":
    main()

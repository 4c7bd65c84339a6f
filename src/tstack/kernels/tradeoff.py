"""Accuracy against skipped work on a real model (003 Fig. 6 and Fig. 7) with all-MiniLM-L6-v2 and shipped texts.

Fig. 6: the distribution of attention probabilities of the exact model, with (real query, real key) pairs apart from
pairs that touch padding (a padded key's probability is exactly 0, and a padded query's row is never used).
Fig. 7: per (score threshold, zero ratio), the work that the tile-skipping kernel did not run (its dense fallback off,
so every skippable tile is skipped) (softmax, weighted sum,
V-Gen) and the share of real probabilities under the threshold (what a per-element kernel would skip, the paper's
measure), against the output change: cosine of sentence embeddings to the exact model's, and agreement of the
nearest-neighbour rankings between the texts.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from tstack.errors import SpecError
from tstack.kernels.zeroskip import SkipStats, ZSParams, ZSSelfAttention
from tstack.minilm import encode, sentence_embeddings

EDGES = (0.0, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # Fig. 6 bins: exact zeros, then decades
TOP_K = 5


@dataclass(frozen=True)
class Distribution:
    """Counts of attention probabilities per bin of ``EDGES`` (bin 0: exactly 0) for three kinds of (query, key) pair."""

    real: tuple[int, ...]  # real query, real key
    padded_key: tuple[int, ...]  # real query, padded key
    padded_query: tuple[int, ...]  # padded query, any key


@dataclass(frozen=True)
class TradeoffPoint:
    """One Fig. 7 point: thresholds, work skipped (fractions) and the output change it cost."""

    score_threshold: float
    zero_ratio: float
    element_below: float  # share of real probabilities < threshold (a per-element kernel's skipped exps and mults)
    softmax_skipped: float  # the tile kernel's skipped shares, averaged over layers and batches by tile count
    weighted_sum_skipped: float
    vgen_skipped: float
    cosine_min: float  # sentence-embedding cosine to the exact model
    cosine_mean: float
    nn_top1: float  # share of texts whose nearest neighbour is unchanged
    nn_topk: float  # mean overlap of the top-``TOP_K`` neighbour sets


def _histogram(p: torch.Tensor, kind: torch.Tensor | None = None, kinds: int = 1) -> list[int]:
    """Counts per ``EDGES`` bin (bin 0: [0, 1e-8) with the exact zeros, the last one [0.1, 1]), per ``kind`` if given.

    ``kind`` (broadcastable to ``p``) holds an integer in [0, kinds) per element; the counts come back kind after kind.
    """
    bins = len(EDGES) - 1
    idx = torch.bucketize(p, torch.tensor(EDGES[1:-1], dtype=p.dtype), right=True)
    if kind is not None:
        idx = idx + bins * kind.expand_as(p)
    return torch.bincount(idx.flatten(), minlength=bins * kinds).tolist()


def _exact(model: Any, batches: list[dict[str, torch.Tensor]],
           thresholds: Sequence[float]) -> tuple[torch.Tensor, Distribution, dict[float, float]]:
    """The exact model's embeddings, its probability distribution (003 Fig. 6) and the real share under each threshold."""
    bins = len(EDGES) - 1
    counts = [0] * (3 * bins)
    below = dict.fromkeys(thresholds, 0)
    real_pairs = 0
    embeddings = []
    for batch in batches:
        out = model(**batch, output_attentions=True)
        embeddings.append(sentence_embeddings(out.last_hidden_state, batch["attention_mask"]))
        mask = batch["attention_mask"].bool()
        real_q, real_k = mask[:, None, :, None], mask[:, None, None, :]  # (B, 1, S, 1), (B, 1, 1, S)
        kind = torch.where(real_q, torch.where(real_k, 0, 1), 2)  # 0 real pair, 1 padded key, 2 padded query
        real = real_q & real_k
        for probs in out.attentions:  # (B, h, S, S) per layer
            counts = [a + b for a, b in zip(counts, _histogram(probs, kind, 3))]
            real_pairs += int(real.sum()) * probs.shape[1]
            below.update({t: n + int((real & (probs < t)).sum()) for t, n in below.items()})
    dist = Distribution(tuple(counts[:bins]), tuple(counts[bins:2 * bins]), tuple(counts[2 * bins:]))
    return torch.cat(embeddings), dist, {t: n / max(1, real_pairs) for t, n in below.items()}


@contextmanager
def zero_skipping(model: Any, params: ZSParams, min_skipped: float | None = None) -> Iterator[list[ZSSelfAttention]]:
    """Swap every encoder layer's ``attention.self`` for a ``ZSSelfAttention`` inside the block; restore it after.

    ``min_skipped`` overrides the kernel's dense fallback (0: every skippable tile is skipped, as the study needs).
    """
    layers = model.encoder.layer
    originals = [layer.attention.self for layer in layers]
    patched = [ZSSelfAttention.from_hf(o, params) for o in originals]
    for module in patched if min_skipped is not None else ():
        module.min_skipped = min_skipped
    try:
        for layer, module in zip(layers, patched):
            layer.attention.self = module
        yield patched
    finally:
        for layer, module in zip(layers, originals):
            layer.attention.self = module


def _neighbours(e: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (N, k) of each text's k nearest other texts by cosine (embeddings are unit vectors)."""
    sim = e @ e.T
    sim.fill_diagonal_(-2.0)  # below any cosine: a text is not its own neighbour
    return sim.topk(k, dim=1).indices


def _agreement(exact: torch.Tensor, other: torch.Tensor) -> tuple[float, float]:
    """(top-1 agreement, mean top-k overlap) of the nearest-neighbour rankings."""
    k = min(TOP_K, exact.shape[0] - 1)
    a, b = _neighbours(exact, k), _neighbours(other, k)
    top1 = float((a[:, 0] == b[:, 0]).float().mean())
    overlap = (a.unsqueeze(2) == b.unsqueeze(1)).any(2).float().sum(1) / k
    return top1, float(overlap.mean())


def _mean_stats(stats: Sequence[SkipStats]) -> tuple[float, float, float]:
    """Tile-count-weighted means of the softmax, weighted-sum and V-Gen skipped fractions."""
    weights = [max(1, s.blocks) for s in stats]
    total = sum(weights)
    return tuple(sum(w * getattr(s, f) for w, s in zip(weights, stats)) / total
                 for f in ("softmax_skipped", "weighted_sum_skipped", "vgen_skipped"))


@dataclass(frozen=True)
class StudySetup:
    """What the study runs on: texts, their token budget and batch size, and the tile size."""

    texts: tuple[str, ...]
    max_length: int = 128
    batch: int = 32
    chunk: int = 64
    threads: int = 1

    def __post_init__(self) -> None:
        problems = []
        if len(self.texts) < 2:
            problems.append(f"texts has {len(self.texts)} entries: nearest neighbours need at least 2")
        if self.batch < 1:
            problems.append(f"batch={self.batch} must be ≥ 1")
        if problems:
            raise SpecError(problems, "trade-off study")


def study(model: Any, tokenizer: Any, setup: StudySetup,
          points: Sequence[tuple[float, float]]) -> tuple[Distribution, list[TradeoffPoint]]:
    """The Fig. 6 distribution of the exact model, and one Fig. 7 point per (score threshold, zero ratio).

    1. tokenize the texts in batches (padded to each batch's longest, truncated to ``max_length``);
    2. run the exact model: embeddings and the probability distribution;
    3. per point, swap in zero-skipping attention, run again, compare embeddings and neighbour rankings.
    """
    texts = list(setup.texts)
    batches = [encode(tokenizer, texts[i:i + setup.batch], setup.max_length) for i in range(0, len(texts), setup.batch)]
    params = [ZSParams(t, r, setup.chunk, setup.threads) for t, r in points]  # validates every point up front
    with torch.no_grad():
        exact, dist, below = _exact(model, batches, [p.score_threshold for p in params])
        out = []
        for p in params:
            with zero_skipping(model, p, min_skipped=0.0) as modules:
                e = torch.cat([sentence_embeddings(model(**b).last_hidden_state, b["attention_mask"]) for b in batches])
            cos = (e * exact).sum(-1)
            top1, topk = _agreement(exact, e)
            skipped = _mean_stats([s for m in modules for s in m.stats])
            out.append(TradeoffPoint(p.score_threshold, p.zero_ratio, below[p.score_threshold], *skipped,
                                     float(cos.min()), float(cos.mean()), top1, topk))
    return dist, out


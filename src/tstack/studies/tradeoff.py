"""Accuracy against skipped work on a real model (003 Fig. 6 and Fig. 7) with all-MiniLM-L6-v2 and shipped texts.

Fig. 6: the distribution of attention probabilities of the exact model, with (real query, real key) pairs apart from
pairs that touch padding (a padded key's probability is exactly 0, and a padded query's row is never used).
Fig. 7: per (score threshold, zero ratio), the work that the tile-skipping kernel did not run (its dense fallback off,
so every skippable tile is skipped) (softmax, weighted sum, V-Gen) and the share of real probabilities under the
threshold (what a per-element kernel would skip, the paper's measure), against the output change: cosine of sentence
embeddings to the exact model's, and agreement of the nearest-neighbour rankings between the texts. The same output
change is also measured for per-element skipping (every score under its row maximum plus ln(threshold) dropped, the
test a kernel can make element by element): how much a kernel of the finest granularity may skip before the
embeddings move.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tstack.errors import SpecError
from tstack.kernels.zeroskip import SkipStats, ZSParams, ZSSelfAttention, check_hf_self_attention, key_padding
from tstack.minilm import embed_batches, encode, sentence_embeddings

EDGES = (0.0, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # Fig. 6 bins: exact zeros, then decades
TOP_K = 5
CRITERIA = ("bound", "probability")  # per-element skipping: e^(s − m) < threshold, or the probability itself


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
    element_skipped: float  # per-element skipping: share of real (query, key) scores dropped, over layers and batches
    element_cosine_min: float  # its sentence-embedding cosine to the exact model
    element_cosine_mean: float


def _histogram(p: torch.Tensor, kind: torch.Tensor | None = None, kinds: int = 1) -> list[int]:
    """Counts per ``EDGES`` bin (bin 0: [0, 1e-8) with the exact zeros, the last one [0.1, 1]), per ``kind`` if given.

    ``kind`` (broadcastable to ``p``) holds an integer in [0, kinds) per element; the counts come back kind after kind.
    """
    bins = len(EDGES) - 1
    idx = torch.bucketize(p, torch.tensor(EDGES[1:-1], dtype=p.dtype), right=True)
    if kind is not None:
        idx = idx + bins * kind.expand_as(p)
    return torch.bincount(idx.flatten(), minlength=bins * kinds).tolist()


def _exact(model: Any, batches: list[dict[str, torch.Tensor]], thresholds: Sequence[float],
           progress: Callable[[int], None] = lambda n=1: None) -> tuple[torch.Tensor, Distribution, dict[float, float]]:
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
        progress(1)
    dist = Distribution(tuple(counts[:bins]), tuple(counts[bins:2 * bins]), tuple(counts[2 * bins:]))
    return torch.cat(embeddings), dist, {t: n / max(1, real_pairs) for t, n in below.items()}


class ElementSkipSelfAttention(nn.Module):
    """HF ``BertSelfAttention`` (eager) with the paper's per-element score-threshold skipping, computed densely.

    A dropped score gets no exponent and no P·V term; the kept ones are normalized by their own sum, as in a kernel
    that never computed the others (003 §III-C.1). ``criterion`` says which scores drop:

    - ``"bound"``: e^(s − m) < threshold (m: the row's maximum), so the probability is under it too. A kernel can
      decide this from the scores and the row maximum alone; the tile kernel uses the same test per tile.
    - ``"probability"``: the probability itself (e^(s − m) / Σ over the row) < threshold, the paper's definition. It
      needs every exponent of the row first, so no kernel saves work this way: it is an oracle, and drops more.

    This is an accuracy model, not a fast path: every exponent still runs here. ``counts``
    collects, per call, (dropped real pairs, real pairs, dead key columns, real key columns): a dead column is a
    (head, real key) whose every real query dropped it, so a V-Gen-skipping kernel would not need its V row.
    """

    def __init__(self, self_attention: nn.Module, threshold: float, criterion: str = "bound") -> None:
        super().__init__()
        check_hf_self_attention(self_attention, "ElementSkipSelfAttention")
        ZSParams(threshold)  # validates the threshold
        if criterion not in CRITERIA:
            raise SpecError([f"criterion={criterion!r} is not one of {', '.join(CRITERIA)}"], "per-element skipping")
        self.criterion = criterion
        self.query, self.key, self.value = self_attention.query, self_attention.key, self_attention.value
        self.heads, self.head_size = int(self_attention.num_attention_heads), int(self_attention.attention_head_size)
        self.threshold = threshold
        self.counts: list[tuple[int, int, int, int]] = []

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, *args, **kwargs):
        """(context (B, S, H), None), as the eager BertSelfAttention returns without probabilities."""
        b, s, _ = hidden_states.shape
        h, d = self.heads, self.head_size

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, s, h, d).transpose(1, 2)  # (B, h, S, d)

        q, k, v = heads(self.query(hidden_states)), heads(self.key(hidden_states)), heads(self.value(hidden_states))
        real = key_padding(attention_mask, b, s)
        real = torch.ones(b, s, dtype=torch.bool) if real is None else real
        scores = (q * d ** -0.5) @ k.transpose(-1, -2)  # (B, h, S, S)
        scores.masked_fill_(~real[:, None, None, :], -math.inf)
        e = (scores - scores.amax(-1, keepdim=True)).exp_()
        dropped = (e if self.criterion == "bound" else e / e.sum(-1, keepdim=True)) < self.threshold
        dropped &= e < 1.0  # the row maximum always stays (a flat row's probabilities may all be under the threshold)
        e.masked_fill_(dropped, 0.0)
        pairs = real[:, None, :, None] & real[:, None, None, :]  # (B, 1, S, S) real query, real key
        dead = (dropped | ~real[:, None, :, None]).all(2) & real[:, None, :]  # (B, h, S): no real query keeps the key
        self.counts.append((int((dropped & pairs).sum()), int(pairs.sum()) * h, int(dead.sum()), int(real.sum()) * h))
        context = (e @ v) / e.sum(-1, keepdim=True)  # the row maximum is kept: the sum is ≥ 1
        return context.transpose(1, 2).reshape(b, s, h * d), None


@contextmanager
def _swapped(model: Any, make: Callable[[nn.Module], nn.Module]) -> Iterator[list[nn.Module]]:
    """Every encoder layer's ``attention.self`` replaced by ``make(original)`` inside the block, restored after."""
    layers = model.encoder.layer
    originals = [layer.attention.self for layer in layers]
    patched = [make(o) for o in originals]
    try:
        for layer, module in zip(layers, patched):
            layer.attention.self = module
        yield patched
    finally:
        for layer, module in zip(layers, originals):
            layer.attention.self = module


@contextmanager
def zero_skipping(model: Any, params: ZSParams, min_skipped: float | None = None) -> Iterator[list[ZSSelfAttention]]:
    """Swap every encoder layer's ``attention.self`` for a ``ZSSelfAttention`` inside the block; restore it after.

    ``min_skipped`` overrides the kernel's dense fallback (0: every skippable tile is skipped, as the study needs).
    """
    def make(original: nn.Module) -> ZSSelfAttention:
        module = ZSSelfAttention.from_hf(original, params)
        if min_skipped is not None:
            module.min_skipped = min_skipped
        return module

    with _swapped(model, make) as patched:
        yield patched


@contextmanager
def element_skipping(model: Any, threshold: float, criterion: str = "bound") -> Iterator[list[ElementSkipSelfAttention]]:
    """Swap every encoder layer's ``attention.self`` for an ``ElementSkipSelfAttention`` inside the block."""
    with _swapped(model, lambda original: ElementSkipSelfAttention(original, threshold, criterion)) as patched:
        yield patched


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


def _embed(model: Any, batches: list[dict[str, torch.Tensor]], progress: Callable[[int], None]) -> torch.Tensor:
    """``embed_batches`` one batch at a time, calling ``progress(1)`` after each."""
    out = []
    for b in batches:
        out.append(embed_batches(model, [b]))
        progress(1)
    return torch.cat(out)


def study_batches(setup: StudySetup, points: Sequence[tuple[float, float]]) -> int:
    """Batch runs of the model ``study`` makes: the exact one, one per distinct threshold and one per point."""
    batches = -(-len(setup.texts) // setup.batch)
    return batches * (1 + len(dict.fromkeys(t for t, _ in points)) + len(points))


def study(model: Any, tokenizer: Any, setup: StudySetup, points: Sequence[tuple[float, float]],
          progress: Callable[[int], None] = lambda n=1: None) -> tuple[Distribution, list[TradeoffPoint]]:
    """The Fig. 6 distribution of the exact model, and one Fig. 7 point per (score threshold, zero ratio).

    1. tokenize the texts in batches (padded to each batch's longest, truncated to ``max_length``);
    2. run the exact model: embeddings and the probability distribution;
    3. per point, swap in zero-skipping attention, run again, compare embeddings and neighbour rankings;
    4. per threshold, the same with per-element skipping (``ElementSkipSelfAttention``).

    ``progress(1)`` follows every batch run of the model (``study_batches`` of them).
    """
    texts = list(setup.texts)
    batches = [encode(tokenizer, texts[i:i + setup.batch], setup.max_length) for i in range(0, len(texts), setup.batch)]
    params = [ZSParams(t, r, setup.chunk, setup.threads) for t, r in points]  # validates every point up front
    with torch.no_grad():
        exact, dist, below = _exact(model, batches, [p.score_threshold for p in params], progress)

        element: dict[float, tuple[float, float, float]] = {}  # threshold → (dropped share, cosine min, cosine mean)
        for t in dict.fromkeys(p.score_threshold for p in params):
            with element_skipping(model, t) as modules:
                cos = (_embed(model, batches, progress) * exact).sum(-1)
            dropped, pairs, _, _ = (sum(c) for c in zip(*(n for m in modules for n in m.counts)))
            element[t] = (dropped / max(1, pairs), float(cos.min()), float(cos.mean()))
        out = []
        for p in params:
            with zero_skipping(model, p, min_skipped=0.0) as modules:
                e = _embed(model, batches, progress)
            cos = (e * exact).sum(-1)
            top1, topk = _agreement(exact, e)
            skipped = _mean_stats([s for m in modules for s in m.stats])
            out.append(TradeoffPoint(p.score_threshold, p.zero_ratio, below[p.score_threshold], *skipped,
                                     float(cos.min()), float(cos.mean()), top1, topk, *element[p.score_threshold]))
    return dist, out


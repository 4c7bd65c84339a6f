"""Cross-operation zero skipping (003 §III-C.1): score-threshold skipping and V-Gen skipping in a tiled attention.

The paper skips the exponent of every score whose probability would fall under the *score threshold* and the
weighted-sum multiplications of those zeros, and does not generate the V rows of key columns whose share of zeros
reaches the *zero-ratio threshold*. Element-wise skipping loses on a CPU (a CSR P·V only wins below ~13% density),
so this kernel skips at tile granularity: scores are computed in (chunk × chunk) tiles of (query block, key chunk);
a tile whose every score lies under its row's maximum plus ln(threshold) holds only probabilities under the
threshold (p = e^(s−m)/Σ ≤ e^(s−m) because Σ ≥ 1), so its exponent and its P·V product never run. V rows are
generated per (batch, head, key chunk) on demand, and a chunk whose every key column has a zero share ≥ zero_ratio
is never generated: its V rows count as zero, its probabilities stay in the softmax denominator (003 §III-C.1).

Keys past the last real token of every sequence are not computed at all; tiles holding only padded keys have
probabilities exactly zero (the gathering path does not run them). Neither counts as skipped work: the fractions in
``SkipStats`` are of the work on real keys, and threshold 0 skips nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tstack.errors import SpecError, TstackError

SPARSE_MIN_SKIPPED = 0.3  # below this share of skippable tile work, running every tile densely is faster
# torch.exp takes a slow path (~100x here) for arguments under about -87.3, whose results are subnormal or zero.
# e^-80 ~ 1.8e-35 is far below the fp32 resolution of a row sum >= 1, so flooring the exponent changes no result.
EXP_FLOOR = -80.0


@dataclass(frozen=True)
class ZSParams:
    """Thresholds and parallelism of zero skipping (003 §IV ``params``)."""

    score_threshold: float = 0.0  # probabilities below this are skipped; 0 = skip nothing (exact)
    zero_ratio: float = 1.0  # V-Gen skipping: skip V rows of keys whose near-zero share ≥ this; 1.0 = all-zero columns only
    chunk: int = 64  # keys (and queries) per tile edge of the chunked attention loop
    threads: int = 1

    def __post_init__(self) -> None:
        problems = []
        for name, lo, hi in (("score_threshold", 0.0, 1.0), ("zero_ratio", 0.0, 1.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
                problems.append(f"{name}={value!r} must be a number in [{lo:g}, {hi:g}]")
        if self.score_threshold == 1.0:
            problems.append("score_threshold=1 would skip every probability: it must be < 1")
        for name, lo in (("chunk", 1), ("threads", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                problems.append(f"{name}={value!r} must be an integer ≥ {lo}")
        if problems:
            raise SpecError(problems, "zero skipping params")


@dataclass(frozen=True)
class SkipStats:
    """Fractions in [0, 1] of the softmax, weighted-sum and V-Gen work (on real keys) that did not run, and tile counts."""

    softmax_skipped: float
    weighted_sum_skipped: float
    vgen_skipped: float
    blocks: int
    blocks_skipped: int


def _check(q: torch.Tensor, k: torch.Tensor, v_input: torch.Tensor, v_weight: torch.Tensor,
           key_padding_mask: torch.Tensor | None) -> None:
    """Raise a TstackError naming the first argument whose shape does not fit the others."""
    if q.dim() != 4 or k.dim() != 4 or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise TstackError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must be (B, h, S, d) and (B, h, S_k, d)")
    b, h, _, d = q.shape
    s_k = k.shape[2]
    if tuple(v_input.shape[:2]) != (b, s_k) or v_input.dim() != 3:
        raise TstackError(f"v_input has shape {tuple(v_input.shape)}: it must be (B, S_k, H_in) = ({b}, {s_k}, H_in)")
    if v_weight.dim() != 2 or tuple(v_weight.shape) != (h * d, v_input.shape[2]):
        raise TstackError(f"v_weight has shape {tuple(v_weight.shape)}: it must be (h·d, H_in) = ({h * d}, {v_input.shape[2]})")
    if key_padding_mask is not None:
        if key_padding_mask.dtype != torch.bool or tuple(key_padding_mask.shape) != (b, s_k):
            raise TstackError(f"key_padding_mask is {key_padding_mask.dtype} {tuple(key_padding_mask.shape)}: "
                              f"it must be bool ({b}, {s_k}), True = real token")
        if not bool(key_padding_mask.any(1).all()):
            raise TstackError("key_padding_mask has a sequence without any real token: every row needs one True")


def _pad_to(x: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """``x`` zero-padded along ``dim`` up to ``size``."""
    extra = size - x.shape[dim]
    return x if extra == 0 else F.pad(x, (0, 0) * (x.dim() - 1 - dim) + (0, extra))


@dataclass(frozen=True)
class _Scores:
    """The scores of one call, their tiles' geometry and each row's maximum."""

    s: torch.Tensor  # (B, h, nq·c, nc·c) scaled scores, -inf on padded keys
    m: torch.Tensor | None  # (B, h, nq·c) row maxima; None when nothing is compared against them (threshold 0)
    real_keys: torch.Tensor  # (B, nc, c) bool, True = a real key inside the computed range
    real_rows: torch.Tensor  # (B, nq, c) bool, True = a real query row
    seq: int  # S, the query rows before padding to nq·c
    chunk: int

    def tiles(self) -> torch.Tensor:
        """A strided view (B, h, nq, nc, c, c) of the scores, one (query block, key chunk) tile per [b, h, i, j]."""
        b, h, rows, cols = self.s.shape
        c = self.chunk
        return self.s.view(b, h, rows // c, c, cols // c, c).transpose(3, 4)


def _scores(q: torch.Tensor, k: torch.Tensor, key_padding_mask: torch.Tensor | None, c: int, row_max: bool) -> _Scores:
    """All scores with one batched matmul over the computed key range, and each row's maximum if ``row_max``."""
    b, h, s, d = q.shape
    real = torch.ones(b, k.shape[2], dtype=torch.bool) if key_padding_mask is None else key_padding_mask
    extent = int(real.any(0).nonzero().max()) + 1  # keys past it are padding in every sequence: never computed
    nc, nq = -(-extent // c), -(-s // c)
    real_keys = _pad_to(real[:, :extent], 1, nc * c)  # (B, nc·c)
    k = _pad_to(k[:, :, :extent], 2, nc * c)
    scores = _pad_to(q * d ** -0.5, 2, nq * c) @ k.transpose(-1, -2)  # (B, h, nq·c, nc·c)
    if not bool(real_keys.all()):
        scores.masked_fill_(~real_keys[:, None, None, :], -math.inf)
    rows = torch.ones(b, s, dtype=torch.bool) if key_padding_mask is None or s != real.shape[1] else real
    m = scores.amax(-1) if row_max else None
    return _Scores(s=scores, m=m, real_keys=real_keys.view(b, nc, c), real_rows=_pad_to(rows, 1, nq * c).view(b, nq, c),
                   seq=s, chunk=c)


def _decide(t: _Scores, p: ZSParams) -> tuple[torch.Tensor, torch.Tensor]:
    """(exp_keep (B, h, nq, nc), vgen_skip (B, h, nc)): tiles whose exponent runs, key chunks whose V is not generated."""
    b, h, rows, cols = t.s.shape
    c = t.chunk
    nq, nc = rows // c, cols // c
    has_real = t.real_keys.any(-1)  # (B, nc)
    if p.score_threshold == 0.0:
        exp_keep = has_real[:, None, None, :].expand(b, h, nq, nc)
        return exp_keep, ~has_real[:, None, :].expand(-1, h, -1)
    bound = t.m + math.log(p.score_threshold)  # (B, h, nq·c): p < threshold wherever s < bound
    bound[..., t.seq:] = math.inf  # rows padding S up to nq·c are not queries: they keep no tile
    tile_max = t.s.view(b, h, nq, c, nc, c).amax(-1)  # (B, h, nq, c, nc)
    exp_keep = (tile_max >= bound.view(b, h, nq, c, 1)).any(3) & has_real[:, None, None, :]
    if p.zero_ratio == 1.0:  # a chunk whose tiles are all skipped has all-zero probability columns
        return exp_keep, ~exp_keep.any(2)
    rows_real = t.real_rows.view(b, 1, rows, 1)
    below = (t.s < bound.unsqueeze(-1)) & rows_real  # (B, h, nq·c, nc·c): real query rows, probability under threshold
    zero_share = below.sum(2) / rows_real.sum(2).clamp(min=1)  # (B, h, nc·c)
    share_ok = (zero_share.view(b, h, nc, c) >= p.zero_ratio) | ~t.real_keys[:, None]
    return exp_keep, share_ok.all(-1) | ~exp_keep.any(2)


def _generate_v(v_input: torch.Tensor, v_weight: torch.Tensor, v_bias: torch.Tensor | None, keep: torch.Tensor,
                c: int) -> torch.Tensor:
    """V (B, h, nc·c, d), generated only for the (batch, head, key chunk) that ``keep`` marks (V-Gen skipping)."""
    b, h, nc = keep.shape
    d = v_weight.shape[0] // h
    x = _pad_to(v_input[:, : nc * c], 1, nc * c)  # (B, nc·c, H_in)
    if bool(keep.all()):
        return F.linear(x, v_weight, v_bias).view(b, nc * c, h, d).transpose(1, 2)
    v = x.new_zeros(b, h, nc, c, d)
    x = x.view(b, nc, c, -1)
    for head in range(h):  # one GEMM per head over the chunks it needs
        bi, ci = keep[:, head].nonzero(as_tuple=True)
        if bi.numel():
            w = v_weight[head * d:(head + 1) * d]
            bias = None if v_bias is None else v_bias[head * d:(head + 1) * d]
            v[bi, head, ci] = F.linear(x[bi, ci], w, bias)  # (n, c, d)
    return v.view(b, h, nc * c, d)


def _dense_sum(t: _Scores, v: torch.Tensor) -> torch.Tensor:
    """Every tile runs: softmax (fused, with its own max subtraction) and P·V in one batched matmul."""
    return (torch.softmax(t.s, -1) @ v)[:, :, : t.seq]  # (B, h, S, d)


def _sparse_sum(t: _Scores, exp_keep: torch.Tensor, pv_keep: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Only the kept tiles: their exponent, row sums and P·V, gathered as (n, c, c) and accumulated per query block."""
    b, h, nq, nc = exp_keep.shape
    c, d = t.chunk, v.shape[-1]
    tiles = t.tiles().reshape(-1, c, c)  # (B·h·nq·nc, c, c) tile-major copy: contiguous gathers below
    idx = exp_keep.flatten().nonzero().squeeze(1)  # kept tiles in (B, h, nq, nc) order
    row_block = idx // nc  # into (B·h·nq)
    p = tiles.index_select(0, idx)  # (n, c, c)
    p.sub_(t.m.view(-1, c, 1).index_select(0, row_block)).clamp_min_(EXP_FLOOR).exp_()
    denom = p.new_zeros(b * h * nq, c).index_add_(0, row_block, p.sum(-1))
    pv = pv_keep.flatten().index_select(0, idx)
    if not bool(pv.all()):  # V-Gen skipped some kept tiles: their V rows are zero
        p, idx, row_block = p[pv], idx[pv], row_block[pv]
    v_chunk = (idx // (nq * nc)) * nc + idx % nc  # into (B·h·nc)
    partial = torch.bmm(p, v.reshape(-1, c, d).index_select(0, v_chunk))  # (n, c, d)
    out = p.new_zeros(b * h * nq, c, d).index_add_(0, row_block, partial)
    return (out / denom.unsqueeze(-1)).view(b, h, nq * c, d)[:, :, : t.seq]


def _tile_work(t: _Scores, shape: torch.Size) -> torch.Tensor:
    """(B, h, nq, nc) real (query row, key) pairs per tile: the weight of a tile in the skipped fractions."""
    b, h, nq, nc = shape
    rows = torch.ones(b, nq * t.chunk, dtype=torch.bool)
    rows[:, t.seq:] = False
    pairs = rows.view(b, nq, -1).sum(-1)[:, :, None] * t.real_keys.sum(-1)[:, None, :]  # (B, nq, nc)
    return pairs.unsqueeze(1).expand(b, h, nq, nc)


def _share(skipped: torch.Tensor, weight: torch.Tensor) -> float:
    """Weighted share of ``skipped`` (0 when there is no work)."""
    whole = float(weight.sum())
    return float((weight * skipped).sum()) / whole if whole else 0.0


def _stats(t: _Scores, exp_keep: torch.Tensor, pv_keep: torch.Tensor, vgen_skip: torch.Tensor) -> SkipStats:
    """Skipped shares weighted by the real (query row, key) pairs in each tile; V-Gen by real key rows."""
    weight = _tile_work(t, exp_keep.shape)
    keys = t.real_keys.sum(-1)[:, None, :].expand(vgen_skip.shape)
    has_work = weight > 0
    return SkipStats(softmax_skipped=_share(~exp_keep, weight), weighted_sum_skipped=_share(~pv_keep, weight),
                     vgen_skipped=_share(vgen_skip, keys), blocks=int(has_work.sum()),
                     blocks_skipped=int((has_work & ~pv_keep).sum()))


def zs_attention(q: torch.Tensor, k: torch.Tensor, v_input: torch.Tensor, v_weight: torch.Tensor,
                 v_bias: torch.Tensor | None, key_padding_mask: torch.Tensor | None, params: ZSParams, *,
                 min_skipped: float = SPARSE_MIN_SKIPPED) -> tuple[torch.Tensor, SkipStats]:
    """Attention with tile-level score-threshold and V-Gen skipping: (context (B, h, S, d), what was skipped).

    Where less than ``min_skipped`` of the tile work is skippable, every tile runs (the gathers would cost more).

    1. scores of all (query block, key chunk) tiles and the row maxima (one batched matmul);
    2. decide the tiles whose exponent runs and the key chunks whose V rows are generated;
    3. generate those V rows; 4. exponent, row sums and P·V of the kept tiles only, then divide (lazy softmax).
    """
    _check(q, k, v_input, v_weight, key_padding_mask)
    previous = torch.get_num_threads()
    if previous != params.threads:
        torch.set_num_threads(params.threads)
    try:
        t = _scores(q, k, key_padding_mask, params.chunk, row_max=params.score_threshold > 0)
        exp_keep, vgen_skip = _decide(t, params)
        real_tiles = t.real_keys.any(-1)[:, None, None, :].expand_as(exp_keep)  # (B, h, nq, nc)
        if _share(~exp_keep, _tile_work(t, exp_keep.shape)) < min_skipped:
            exp_keep = real_tiles  # too few tiles to skip for the gathers to pay: every tile runs
        v = _generate_v(v_input, v_weight, v_bias, ~vgen_skip, params.chunk)
        if bool((exp_keep == real_tiles).all()):
            context, pv_keep = _dense_sum(t, v), exp_keep  # P·V runs on every tile, V-Gen-skipped rows being zero
        else:
            pv_keep = exp_keep & ~vgen_skip.unsqueeze(2)
            context = _sparse_sum(t, exp_keep, pv_keep, v)
        stats = _stats(t, exp_keep, pv_keep, vgen_skip)
    finally:
        if previous != params.threads:
            torch.set_num_threads(previous)
    return context, stats


def key_padding(attention_mask: torch.Tensor | None, b: int, s_k: int) -> torch.Tensor | None:
    """The (B, S_k) key-padding mask behind a HF encoder mask: additive float or bool, (B, 1, S|1, S_k) or (B, S_k)."""
    if attention_mask is None:
        return None
    if attention_mask.dim() == 2 and tuple(attention_mask.shape) == (b, s_k):
        return attention_mask.bool()
    if attention_mask.dim() != 4 or (attention_mask.shape[0], attention_mask.shape[1], attention_mask.shape[3]) != (b, 1, s_k):
        raise TstackError(f"attention_mask has shape {tuple(attention_mask.shape)}: ZSSelfAttention takes (B, 1, S|1, S_k) "
                          f"or (B, S_k) with B={b}, S_k={s_k}")
    mask = attention_mask[:, 0]  # (B, S|1, S_k)
    real = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2  # HF: 0 real, dtype min masked
    if not bool((real == real[:, :1]).all()):
        raise TstackError("attention_mask differs between queries (causal or custom mask): ZSSelfAttention supports "
                          "key-padding masks of bidirectional encoders only")
    return real[:, 0]


def check_hf_self_attention(module: object, who: str) -> None:
    """Raise a TstackError naming what ``module`` lacks to stand for a HF ``BertSelfAttention`` in ``who``."""
    missing = [n for n in ("query", "key", "value", "num_attention_heads", "attention_head_size") if not hasattr(module, n)]
    if missing:
        raise TstackError(f"{type(module).__name__} lacks {', '.join(missing)}: {who} needs a HF BertSelfAttention-like "
                          "module")


class ZSSelfAttention(nn.Module):
    """A drop-in for HF ``BertSelfAttention`` (eager) that runs ``zs_attention`` and records its ``SkipStats``."""

    def __init__(self, query: nn.Linear, key: nn.Linear, value: nn.Linear, heads: int, params: ZSParams) -> None:
        super().__init__()
        self.query, self.key, self.value = query, key, value
        self.num_attention_heads = heads
        self.attention_head_size = query.out_features // heads
        self.params = params
        self.min_skipped = SPARSE_MIN_SKIPPED  # 0 for studies that must skip every skippable tile
        self.stats: list[SkipStats] = []

    @classmethod
    def from_hf(cls, self_attention: nn.Module, params: ZSParams) -> ZSSelfAttention:
        """Wrap the (shared, not copied) Q/K/V projections of a HF ``BertSelfAttention``-like module."""
        check_hf_self_attention(self_attention, "ZSSelfAttention.from_hf")
        if not isinstance(params, ZSParams):
            raise TstackError(f"params is {type(params).__name__}: ZSSelfAttention.from_hf needs a ZSParams")
        heads = int(self_attention.num_attention_heads)
        if heads * int(self_attention.attention_head_size) != self_attention.query.out_features:
            raise TstackError(f"{heads} heads × {self_attention.attention_head_size} ≠ query width "
                              f"{self_attention.query.out_features}")
        return cls(self_attention.query, self_attention.key, self_attention.value, heads, params)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, *args, **kwargs):
        """(context (B, S, H), None): the eager BertSelfAttention's return, without the probabilities (never formed)."""
        if kwargs.get("encoder_hidden_states") is not None or kwargs.get("past_key_values") is not None:
            raise TstackError("ZSSelfAttention is self-attention of an encoder: no cross-attention or key/value cache")
        b, s, _ = hidden_states.shape
        h, d = self.num_attention_heads, self.attention_head_size
        q = self.query(hidden_states).view(b, s, h, d).transpose(1, 2)  # (B, h, S, d)
        k = self.key(hidden_states).view(b, s, h, d).transpose(1, 2)
        mask = key_padding(attention_mask, b, s)
        context, stats = zs_attention(q, k, hidden_states, self.value.weight, self.value.bias, mask, self.params,
                                      min_skipped=self.min_skipped)
        self.stats.append(stats)
        return context.transpose(1, 2).reshape(b, s, h * d), None

"""The fast integer encoder layer: ``torch._int_mm`` GEMMs and the fused numba kernels of ``tstack.integer.fused``.

``plan(p)`` lays an ``IntLayer`` out for the fused path once: Q, K and V weights concatenated into one (K, 3H) GEMM,
biases added inside the kernels that follow each GEMM, and every dyadic requantization expanded to one multiplier,
shift and range per channel. ``forward`` computes exactly the integers of ``layer.layer_forward`` (tests compare both
with the int64 oracle); it launches 6 GEMM groups and 5 fused kernels per layer instead of ~90 PyTorch ops.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import torch

from tstack.errors import TstackError
from tstack.integer import fused
from tstack.integer.layer import IntLayer
from tstack.integer.nonlinear import LayerNormParams
from tstack.integer.quant import Dyadic

_ARR = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _channels(d: Dyadic, n: int) -> _ARR:
    """(m, e, lo, hi) int64 arrays of length n: a scalar requantization repeated, a per-channel one checked and copied."""
    m, e = (torch.as_tensor(t, dtype=torch.int64).reshape(-1) for t in (d.m, d.e))
    if m.numel() not in (1, n):
        raise TstackError(f"requantization has {m.numel()} channels where {n} are expected")
    m, e = m.expand(n), e.expand(n)
    return (m.numpy().copy(), e.numpy().copy(), np.full(n, d.lo, np.int64), np.full(n, d.hi, np.int64))


def _ln(p: LayerNormParams, n: int) -> tuple[np.ndarray, ...]:
    return (p.gamma.numpy().astype(np.int64), p.beta.numpy().astype(np.int64), *_channels(p.out, n))


@dataclass(frozen=True)
class FusedLayer:
    """An IntLayer laid out for the fused kernels (numpy int64 constants; int8 weights stay torch tensors)."""

    heads: int
    bits: int
    wqkv: torch.Tensor  # int8 (K, 3H)
    bqkv: np.ndarray
    rq_qkv: _ARR
    softmax: tuple[int, ...]  # m, e, lo, mb, q_b, q_c of i-Softmax (scalar requantization)
    rq_ctx: _ARR
    wo: torch.Tensor
    bo: np.ndarray
    res1: tuple[np.ndarray, ...]  # accumulator (m, e, lo, hi), residual (m, e, lo, hi), LayerNorm (gamma, beta, m, e, lo, hi)
    w1: torch.Tensor
    b1: np.ndarray
    gelu: tuple[np.ndarray | int, ...]
    w2: torch.Tensor
    b2: np.ndarray
    res2: tuple[np.ndarray, ...]


def plan(p: IntLayer) -> FusedLayer:
    """Lay out ``p`` for ``forward``; a TstackError for softmax codes wider than 8 bits (the fused path's int8 digits)."""
    if p.softmax_bits > 8:
        raise TstackError(f"softmax_bits={p.softmax_bits}: the fused path takes softmax codes of at most 8 bits "
                          "(use layer.layer_forward)")
    hidden = p.q.wt.shape[1]
    ffn = p.fc1.wt.shape[1]
    qkv = [_channels(d, hidden) for d in p.qkv_out]
    rq_qkv = tuple(np.concatenate([c[i] for c in qkv]) for i in range(4))
    sm = p.softmax
    if sm.inp.m.numel() != 1:
        raise TstackError("i-Softmax input requantization must be one scalar multiplier")
    g = p.gelu
    gelu = (*_channels(g.inp, ffn), g.k, g.q_b, g.q_c, g.q_1, g.k2, *_channels(g.out, ffn))
    bias = [lin.bias.numpy().astype(np.int64) for lin in (p.q, p.k, p.v)]
    return FusedLayer(
        heads=p.heads, bits=p.softmax_bits, wqkv=torch.cat([p.q.wt, p.k.wt, p.v.wt], dim=1).contiguous(),
        bqkv=np.concatenate(bias), rq_qkv=rq_qkv,  # type: ignore[arg-type]
        softmax=(int(sm.inp.m), int(sm.inp.e), sm.inp.lo, sm.m, sm.q_b, sm.q_c),
        rq_ctx=_channels(p.ctx_out, hidden), wo=p.o.wt, bo=p.o.bias.numpy().astype(np.int64),
        res1=(*_channels(p.res1[0], hidden), *_channels(p.res1[1], hidden), *_ln(p.ln1, hidden)),
        w1=p.fc1.wt, b1=p.fc1.bias.numpy().astype(np.int64), gelu=gelu,
        w2=p.fc2.wt, b2=p.fc2.bias.numpy().astype(np.int64),
        res2=(*_channels(p.res2[0], hidden), *_channels(p.res2[1], hidden), *_ln(p.ln2, hidden)))


def _threads() -> None:
    """The kernels use as many threads as PyTorch's intra-op pool (within numba's pool)."""
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


def layernorm(x: torch.Tensor, p: LayerNormParams) -> torch.Tensor:
    """int32 (..., H) -> int8 i-LayerNorm codes (nonlinear.i_layernorm) in one fused pass per row."""
    hidden = x.shape[-1]
    _threads()
    out = torch.empty(x.shape, dtype=torch.int8)
    fused.layernorm(x.reshape(-1, hidden).contiguous().numpy(), *_ln(p, hidden), out.view(-1, hidden).numpy())
    return out


def _mm(x: torch.Tensor, w: torch.Tensor) -> np.ndarray:
    return torch._int_mm(x.reshape(-1, x.shape[-1]), w).numpy()


def forward(x: torch.Tensor, mask_add: torch.Tensor | None, f: FusedLayer) -> torch.Tensor:
    """int8 (B, S, H) -> int8 (B, S, H); ``mask_add`` as for layer.layer_forward ((B, 1, 1, S) int32 or None)."""
    b, s, hidden = x.shape
    d = hidden // f.heads
    _threads()
    qkv = torch.empty(b, s, 3, f.heads, d, dtype=torch.int8)
    fused.requant_rows(_mm(x, f.wqkv), f.bqkv, *f.rq_qkv, qkv.view(b * s, 3 * hidden).numpy())
    q, k, v = qkv.unbind(2)  # (B, S, h, d) views: _int_mm takes their strided per-head slices without copies
    qs, kts, vs = (t.flatten(0, 1).unbind() for t in (q.transpose(1, 2), k.permute(0, 2, 3, 1), v.transpose(1, 2)))
    scores = torch.empty(b, f.heads, s, s, dtype=torch.int32)
    for qi, kti, oi in zip(qs, kts, scores.flatten(0, 1).unbind(), strict=True):
        torch._int_mm(qi, kti, out=oi)
    mask = mask_add.reshape(b, s) if mask_add is not None else torch.zeros(b, s, dtype=torch.int32)
    offset = 128 if f.bits == 8 else 0
    digits = torch.empty(b, f.heads, s, s, dtype=torch.int8)
    fused.softmax_rows(scores.numpy(), mask.numpy(), *f.softmax, f.bits, offset, digits.numpy())
    acc = torch.empty(b, f.heads, s, d, dtype=torch.int32)
    for di, vi, oi in zip(digits.flatten(0, 1).unbind(), vs, acc.flatten(0, 1).unbind(), strict=True):
        torch._int_mm(di, vi, out=oi)
    ctx = torch.empty(b, s, hidden, dtype=torch.int8)
    fused.context_merge(acc.numpy(), v.numpy(), offset, *f.rq_ctx, ctx.numpy())
    h1 = torch.empty(b, s, hidden, dtype=torch.int8)
    fused.residual_layernorm(_mm(ctx, f.wo), f.bo, *f.res1[:4], x.reshape(-1, hidden).contiguous().numpy(), *f.res1[4:],
                             h1.view(-1, hidden).numpy())
    act = torch.empty(b * s, f.w1.shape[1], dtype=torch.int8)
    fused.gelu(_mm(h1, f.w1), f.b1, *f.gelu, act.numpy())
    out = torch.empty(b, s, hidden, dtype=torch.int8)
    fused.residual_layernorm(_mm(act, f.w2), f.b2, *f.res2[:4], h1.view(-1, hidden).numpy(), *f.res2[4:],
                             out.view(-1, hidden).numpy())
    return out

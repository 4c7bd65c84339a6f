"""Fast integer linear algebra: int8 x int8 -> int32 GEMMs (``torch._int_mm``), attention matmuls and residual adds.

GEMM choice (benchmarks/ibert.py measures it): on this Xeon (AVX-512 VNNI) ``torch._int_mm`` computes int8 x int8 ->
int32 with integer instructions only and runs 3-4x faster than the fp32 GEMM of the same shape, so the integer path
needs neither the fbgemm quantized linear (whose requantization multiplies by a float) nor fp32 GEMMs on integer values.
Overflow: |a| <= 128, |w| <= 127, so |sum_k a_k w_k| <= 16256 K < 2**31 for K < 132104; with the int32 bias bounded by
2**30 - 16256 K at conversion the biased accumulator stays below 2**30.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tstack.errors import TstackError
from tstack.integer.quant import Dyadic, requant

MASK_ADD = -(2**30)  # added to the scores of masked keys: their exponent clamps to -30 ln 2 and i-exp gives 0
MAX_K = 32768  # reduction length the accumulator bound is proved for (16256 K + 2**30 < 2**31 needs K < 66052)


@dataclass(frozen=True)
class IntLinear:
    """y = x W^T + b on int8 codes: weights (K, N) int8 (already transposed), bias int32 (N,), int32 output."""

    wt: torch.Tensor
    bias: torch.Tensor


def int_linear_weights(w_q: torch.Tensor, bias_q: torch.Tensor, where: str) -> IntLinear:
    """Pack int8 weights (N, K) and an int64 bias (N,) after checking the int32 accumulator bound."""
    n, k = w_q.shape
    if k > MAX_K:
        raise TstackError(f"{where}: reduction length K={k} exceeds {MAX_K}, the length the int32 accumulator is proved for")
    limit = 2**30 - 16256 * k
    worst = int(bias_q.abs().max()) if bias_q.numel() else 0
    if worst > limit:
        raise TstackError(f"{where}: bias code {worst} exceeds {limit} (2**30 - 16256 K): the bias is too large for its scale")
    return IntLinear(w_q.t().contiguous(), bias_q.to(torch.int32))


def linear(x: torch.Tensor, p: IntLinear) -> torch.Tensor:
    """int8 (..., K) -> int32 (..., N) accumulators: x W^T + b."""
    acc = torch._int_mm(x.reshape(-1, x.shape[-1]), p.wt)
    return acc.add_(p.bias).reshape(*x.shape[:-1], p.wt.shape[1])


def heads(x: torch.Tensor, h: int) -> torch.Tensor:
    """(B, S, H) -> (B, h, S, d), contiguous."""
    b, s, hidden = x.shape
    return x.reshape(b, s, h, hidden // h).transpose(1, 2).contiguous()


def scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """int8 (B, h, S, d) x int8 (B, h, S, d) -> int32 (B, h, S, S): Q K^T per head (|.| < 16384 d)."""
    b, h, s, _ = q.shape
    out = torch.empty(b, h, s, k.shape[2], dtype=torch.int32)
    for qi, ki, oi in zip(q.flatten(0, 1).unbind(), k.flatten(0, 1).unbind(), out.flatten(0, 1).unbind(), strict=True):
        torch._int_mm(qi, ki.t(), out=oi)
    return out


def context(p: torch.Tensor, v: torch.Tensor, bits: int) -> torch.Tensor:
    """Softmax codes in [0, 2**bits) (B, h, S, L) x int8 V (B, h, L, d) -> int32 (B, h, S, d).

    Codes above 7 bits are split into base-256 digits with zero point 128, so each digit is an int8 operand:
    P = sum_j 256**j (D_j - 128) + 128 sum_j 256**j, and P V = sum_j 256**j (D_j - 128) V + 128 (sum_j 256**j) colsum(V).
    """
    if bits + 7 + (v.shape[2] - 1).bit_length() > 31:
        raise TstackError(f"softmax_bits={bits} with {v.shape[2]} keys can overflow the int32 context accumulator")
    b, h, s, _ = p.shape
    out = torch.zeros(b, h, s, v.shape[3], dtype=torch.int32)
    if bits <= 7:
        digits, weights = [p.to(torch.int8)], [1]
    elif bits == 8:  # one digit: P - 128 fits int8
        digits, weights = [(p.to(torch.int16) - 128).to(torch.int8)], [1]
        out += 128 * v.sum(dim=2, keepdim=True, dtype=torch.int32)
    else:
        p32 = p.to(torch.int32)
        ndig = (bits + 7) // 8
        digits = [((p32 >> (8 * j)) & 255).sub_(128).to(torch.int8) for j in range(ndig)]
        weights = [1 << (8 * j) for j in range(ndig)]
        out += (128 * sum(weights)) * v.sum(dim=2, keepdim=True, dtype=torch.int32)
    part = torch.empty(s, v.shape[3], dtype=torch.int32)
    vs, outs = v.flatten(0, 1).unbind(), out.flatten(0, 1).unbind()
    for dig, w in zip(digits, weights, strict=True):
        for di, vi, oi in zip(dig.flatten(0, 1).unbind(), vs, outs, strict=True):
            torch._int_mm(di, vi, out=part)
            oi.add_(part if w == 1 else part * w)
    return out


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, h, S, d) -> (B, S, H), contiguous."""
    b, h, s, d = x.shape
    return x.transpose(1, 2).reshape(b, s, h * d)


def residual_add(acc: torch.Tensor, d_acc: Dyadic, res: torch.Tensor, d_res: Dyadic) -> torch.Tensor:
    """Residual connection in integers: both branches requantized to one 16-bit scale, added in int32 (< 2**16)."""
    return requant(acc, d_acc).to(torch.int32).add_(requant(res, d_res))


def mask_bias(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L) 0/1 mask -> (B, 1, 1, L) int32 additive mask: 0 for kept keys, MASK_ADD for padding."""
    return ((attention_mask.to(torch.int32) - 1) * -MASK_ADD)[:, None, None, :]


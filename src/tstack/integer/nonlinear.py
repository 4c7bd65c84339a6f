"""I-BERT's integer-only nonlinear ops as fast vectorized kernels: i-GELU, i-exp, i-Softmax, i-LayerNorm, integer sqrt.

Each op's constants are fixed when a model is converted (``*_params`` builders take float scales); at run time the
kernels see integer tensors and Python ints only. Bit widths at each step are in the comments ("< 2**k" bounds
magnitudes) and proved in docs/integer.md; ``tstack.integer.oracle`` computes the same integers element by element.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tstack.errors import TstackError
from tstack.integer.costs import ISQRT_NEWTON_STEPS as ISQRT_STEPS
from tstack.integer.quant import Dyadic, dyadic, requant

# I-BERT §3.4 (Eq. 8): erf(x) ~ sgn(x) [a (min(|x|, -b) + b)^2 + 1] with a = -0.2888, b = -1.769.
ERF_A, ERF_B = -0.2888, -1.769
# I-BERT §3.5 (Eq. 12): exp(p) ~ 0.3585 (p + 1.353)^2 + 0.344 on p in (-ln 2, 0].
EXP_A, EXP_B, EXP_C = 0.3585, 1.353, 0.344
LN2 = math.log(2.0)
EXP_CLAMP = 30  # I-BERT's n: exponents below -30 ln 2 give 0 (the polynomial is < 2**23, shifted right by 30)
ERF_ARG_BITS = 12  # i-erf's argument is shifted down until the clip point -q_b is at most 2**12
SIGMOID_BITS = 15  # (q_erf + q_1) is shifted down to 15 bits, so q * (q_erf + q_1) < 2**30 fits int32
SOFTMAX_F = 48  # softmax factor floor(2**48 / sum): exp * factor <= 2**48 fits int64
LN_F, LN_P = 40, 16  # LayerNorm factor floor(2**40 / std); normalized value kept as y / std_sum * 2**16
_POW4 = torch.tensor([4**j for j in range(32)], dtype=torch.int64)  # bucketize(n, 4**j) = ceil(bit_length(n) / 2)


@dataclass(frozen=True)
class GeluParams:
    """i-GELU (I-BERT Alg. 2) on a 16-bit input q at scale S: erf at scale S/sqrt(2), output requantized to int8."""

    inp: Dyadic  # int32 accumulator -> q (|q| < 2**15)
    k: int  # erf argument t = q >> k at scale S_t = S 2**k / sqrt(2)
    q_b: int  # floor(b / S_t) < 0
    q_c: int  # floor(1 / (a S_t**2)) < 0
    q_1: int  # floor(1 / S_erf), S_erf = a S_t**2
    k2: int  # (q_erf + q_1) >> k2 has at most 15 bits
    out: Dyadic  # q * (...) at scale S S_erf 2**k2 / 2 -> int8


def gelu_params(acc_ratio: torch.Tensor, s_in: float, s_out: float, out_bits: int = 8) -> GeluParams:
    """Constants of i-GELU for input scale ``s_in`` (16-bit codes) and output scale ``s_out``; acc_ratio = acc scale / s_in."""
    s = s_in / math.sqrt(2.0)
    k = max(0, math.ceil(math.log2(-ERF_B / (s * 2**ERF_ARG_BITS))))
    s_t = s * 2**k
    q_b = math.floor(ERF_B / s_t)
    q_c = math.floor(1.0 / (ERF_A * s_t**2))
    s_erf = ERF_A * s_t**2
    q_1 = math.floor(1.0 / s_erf)
    k2 = max(0, (abs(q_c) + abs(q_1)).bit_length() - SIGMOID_BITS)
    out = dyadic(s_in * s_erf * 2**k2 / 2.0 / s_out, 30, out_bits, "gelu output")
    return GeluParams(inp=dyadic(acc_ratio, 31, 16, "gelu input"), k=k, q_b=q_b, q_c=q_c, q_1=q_1, k2=k2, out=out)


def i_gelu(acc: torch.Tensor, p: GeluParams) -> torch.Tensor:
    """int32 accumulator (..., N) -> int8 GELU codes (I-BERT Alg. 2)."""
    q = requant(acc, p.inp).to(torch.int32)  # |q| < 2**15
    t = q >> p.k  # |t| < 2**15
    clipped = t.abs().clamp_(max=-p.q_b)  # <= -q_b <= 2**12
    u = clipped.add_(p.q_b)
    poly = u.mul_(u).add_(p.q_c)  # |poly| <= |q_c| < 2**25
    erf = poly.mul_(torch.sign(t))
    h = erf.add_(p.q_1).bitwise_right_shift_(p.k2)  # |h| <= 2**15
    return requant(h.mul_(q), p.out)  # |q h| < 2**30


@dataclass(frozen=True)
class SoftmaxParams:
    """i-Softmax (I-BERT Alg. 3 and §3.5): scores requantized to S_w = ln2 / 2**m, i-exp, integer normalization."""

    inp: Dyadic  # (scores - row max) at the score scale -> [-30 * 2**m, 0] at S_w
    m: int  # frac bits of ln 2: q_ln2 = 2**m, so range reduction is a shift
    q_b: int  # floor(b / S_w)
    q_c: int  # floor(c / (a S_w**2))
    bits: int  # output codes in [0, 2**bits - 1] at scale 2**-bits


def softmax_params(score_scale: float, exp_bits: int = 10, out_bits: int = 8) -> SoftmaxParams:
    """Constants of i-Softmax for scores at ``score_scale`` (1/sqrt(d) folded in)."""
    if not 4 <= exp_bits <= 11:
        raise TstackError(f"exp_bits={exp_bits} is outside 4..11 (the exp polynomial must stay below 2**25)")
    if not 2 <= out_bits <= 16:
        raise TstackError(f"softmax_bits={out_bits} is outside 2..16")
    s_w = LN2 / 2**exp_bits
    inp = dyadic(score_scale / s_w, 31, 32, "softmax input")
    inp = Dyadic(m=inp.m, e=inp.e, lo=-EXP_CLAMP * 2**exp_bits, hi=0, in_bits=31)  # x <= 0; exponents below -30 ln 2 saturate
    return SoftmaxParams(inp=inp, m=exp_bits, q_b=math.floor(EXP_B / s_w), q_c=math.floor(EXP_C / (EXP_A * s_w**2)),
                         bits=out_bits)


def i_exp(x: torch.Tensor, p: SoftmaxParams) -> torch.Tensor:
    """int32 x in [-30 * 2**m, 0] at S_w -> exp codes at scale a S_w**2 (I-BERT Alg. 3; ln 2 = 2**m exactly)."""
    z = torch.neg(x).bitwise_right_shift_(p.m)  # 0 <= z <= 30
    r = x + (z << p.m)  # -2**m < r <= 0
    u = r.add_(p.q_b)
    poly = u.mul_(u).add_(p.q_c)  # 0 < poly <= q_b**2 + q_c < 5.81 * 2**(2m) < 2**25
    return poly.bitwise_right_shift_(z)


def i_softmax(scores: torch.Tensor, mask_add: torch.Tensor | None, p: SoftmaxParams) -> torch.Tensor:
    """int32 scores (..., L) -> codes in [0, 2**bits - 1]; ``mask_add`` is 0 for kept keys and -2**30 for masked ones."""
    if mask_add is not None:
        scores = scores + mask_add  # |scores| < 2**21 (d <= 128), masked ones < -2**30 + 2**21
    x = scores - scores.amax(dim=-1, keepdim=True)  # pass 1: x in (-2**31, 0]
    e = i_exp(requant(x, p.inp).to(torch.int32), p)  # < 2**25
    total = e.sum(dim=-1, keepdim=True, dtype=torch.int64)  # pass 2: < L 2**25
    factor = torch.div(1 << SOFTMAX_F, total, rounding_mode="floor")  # one divide per row; total >= e(0) > 0
    shift = SOFTMAX_F - p.bits
    out = (e * factor).add_(1 << (shift - 1)).bitwise_right_shift_(shift)  # pass 3: e * factor <= 2**48
    return out.clamp_(max=(1 << p.bits) - 1).to(torch.int8 if p.bits <= 7 else torch.int16 if p.bits <= 15 else torch.int32)


def isqrt(n: torch.Tensor) -> torch.Tensor:
    """floor(sqrt(n)) for int64 1 <= n < 2**48 by I-BERT Alg. 4: Newton from 2**ceil(bits/2), ISQRT_STEPS bounded steps."""
    x = torch.bitwise_left_shift(torch.ones_like(n), torch.bucketize(n, _POW4, right=True))
    for _ in range(ISQRT_STEPS):
        x = torch.minimum(x, (x + torch.div(n, x, rounding_mode="floor")) >> 1)  # stops once x_{i+1} >= x_i
    return x


@dataclass(frozen=True)
class LayerNormParams:
    """i-LayerNorm (I-BERT §3.6): integer mean, variance, isqrt; gamma and beta as integers; requantized to int8."""

    gamma: torch.Tensor  # int64 (H,), round(gamma 2**g), |.| < 2**15
    beta: torch.Tensor  # int64 (H,), round(beta 2**(16 + g) / sqrt(H))
    out: Dyadic  # norm * gamma + beta (< 2**33) -> int8


def layernorm_params(gamma: torch.Tensor, beta: torch.Tensor, s_out: float, out_bits: int = 8) -> LayerNormParams:
    """Constants of i-LayerNorm with affine ``gamma``, ``beta`` (H,) and output scale ``s_out``."""
    h = gamma.numel()
    if not 2 <= h <= 2**14:
        raise TstackError(f"LayerNorm width {h} is outside 2..16384 (the variance sum must stay below 2**48)")
    g64, b64 = gamma.detach().to(torch.float64), beta.detach().to(torch.float64)
    g = 14 - math.floor(math.log2(float(g64.abs().max().clamp(min=1e-30))))  # largest |gamma| code in [2**14, 2**15)
    # the normalized value is y / sqrt(sum y^2) 2**16 = (y / std) 2**16 / sqrt(H): beta joins it at that scale.
    unit = math.sqrt(h) / 2**LN_P
    gq = torch.round(g64 * 2**g).to(torch.int64)
    bq = torch.round(b64 * 2**g / unit).clamp(-(2**40), 2**40).to(torch.int64)
    return LayerNormParams(gq, bq, dyadic(unit / 2**g / s_out, 42, out_bits, "layernorm output"))


def i_layernorm(x: torch.Tensor, p: LayerNormParams) -> torch.Tensor:
    """int32 x (..., H) with |x| < 2**16 -> int8 codes of gamma (x - mean) / std + beta (I-BERT §3.6, Alg. 4)."""
    h = x.shape[-1]
    s = x.sum(dim=-1, keepdim=True, dtype=torch.int64)  # pass 1: |s| < H 2**16
    y = (x - torch.div(s, h, rounding_mode="floor")).to(torch.int64)  # |y| < 2**17
    var = (y * y).sum(dim=-1, keepdim=True)  # pass 2: < H 2**34 <= 2**48
    std = isqrt(var.clamp_(min=1))  # < 2**24
    factor = torch.div(1 << LN_F, std, rounding_mode="floor")  # <= 2**40
    norm = (y * factor) >> (LN_F - LN_P)  # pass 3: |y| < std_sum + 1, so |norm| <= 2**17
    return requant(norm.mul_(p.gamma).add_(p.beta), p.out)  # |norm gamma + beta| < 2**32 + 2**40 < 2**42

"""Symmetric quantization and dyadic requantization (I-BERT §3.1: integer multiplier and shift, no float at run time).

Scales are Python floats used only while converting a model; at run time every requantization is
``clamp((x * m + 2**(e-1)) >> e, lo, hi)`` on integer tensors: a multiply by an integer ``m``, round half up by adding
half of the divisor, an arithmetic right shift by ``e`` and saturation. The product is formed in int64; a site whose
input is below ``2**in_bits`` gets a multiplier below ``2**(62 - in_bits)`` (at most 31 bits), so
``|x * m| + 2**(e-1) < 2**62 + 2**61 < 2**63`` and nothing overflows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tstack.errors import TstackError

MAX_MUL_BITS = 31
PRODUCT_BITS = 62  # |x| < 2**in_bits and |m| < 2**(62 - in_bits): the int64 product and the rounding half stay below 2**63


def qmax(bits: int) -> int:
    """Largest magnitude of a symmetric signed ``bits``-bit code: 2**(bits-1) - 1 (127 for int8)."""
    return (1 << (bits - 1)) - 1


def quantize_per_channel(w: torch.Tensor, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights (N, K) -> int8 codes and per-output-channel float64 scales (symmetric, max-abs, round half to even)."""
    w64 = w.detach().to(torch.float64)
    amax = w64.abs().amax(dim=1).clamp(min=1e-12)  # an all-zero row keeps a positive scale; its codes are all 0
    scales = amax / qmax(bits)
    q = torch.round(w64 / scales[:, None]).clamp(-qmax(bits), qmax(bits))
    return q.to(torch.int8 if bits <= 8 else torch.int16), scales


def fixed_bits(ratio: float, frac_bits: int) -> int:
    """round(ratio * 2**frac_bits), round half up, computed exactly from the float's binary value."""
    num, den = float(ratio).as_integer_ratio()
    return (2 * num * (1 << frac_bits) + den) // (2 * den)


@dataclass(frozen=True)
class Dyadic:
    """Requantization x -> clamp((x*m + 2**(e-1)) >> e, lo, hi); ``m`` and ``e`` are scalars or one per channel (last dim)."""

    m: torch.Tensor
    e: torch.Tensor
    lo: int
    hi: int
    in_bits: int

    @property
    def dtype(self) -> torch.dtype:
        """The narrowest integer dtype holding [lo, hi]."""
        for dt in (torch.int8, torch.int16, torch.int32):
            if torch.iinfo(dt).min <= self.lo and self.hi <= torch.iinfo(dt).max:
                return dt
        return torch.int64


def dyadic(ratio: torch.Tensor | float, in_bits: int, out_bits: int, where: str) -> Dyadic:
    """The dyadic approximation m / 2**e of ``ratio`` (one per channel), with the most multiplier bits that cannot overflow.

    ``in_bits``: the input satisfies |x| < 2**in_bits. ``out_bits``: saturate to the symmetric signed range of that many
    bits. Each channel gets its own shift, so that its |m| lies in [2**(mul_bits-2), 2**(mul_bits-1)].
    """
    r = torch.as_tensor(ratio, dtype=torch.float64)
    if not bool(torch.isfinite(r).all()) or bool((r == 0).any()):
        raise TstackError(f"{where}: requantization ratios must be finite and non-zero; got {r.flatten()[:8].tolist()}")
    mul_bits = min(MAX_MUL_BITS, PRODUCT_BITS - in_bits)
    if mul_bits < 8:
        raise TstackError(f"{where}: input of {in_bits} bits leaves {mul_bits} multiplier bits; at most 54 input bits allowed")
    flat = r.reshape(-1).tolist()
    shifts = [mul_bits - 1 - math.floor(math.log2(abs(v))) for v in flat]
    bad = [e for e in shifts if not 1 <= e <= 62]
    if bad:
        raise TstackError(f"{where}: requantization ratio needs shift {bad[0]}; allowed shifts are 1..62")
    m = torch.tensor([fixed_bits(v, e) for v, e in zip(flat, shifts, strict=True)], dtype=torch.int64).reshape(r.shape)
    return Dyadic(m=m, e=torch.tensor(shifts, dtype=torch.int64).reshape(r.shape), lo=-qmax(out_bits), hi=qmax(out_bits),
                  in_bits=in_bits)


def requant(x: torch.Tensor, d: Dyadic) -> torch.Tensor:
    """Apply the dyadic requantization (I-BERT Eq. 4's integer-only path) to an integer tensor; channels are the last dim."""
    if d.e.dim() == 0:  # one shift: Python ints keep the kernels scalar
        e = int(d.e)
        y = x.to(torch.int64) * d.m
        y.add_(1 << (e - 1)).bitwise_right_shift_(e)
    else:
        y = (x.to(torch.int64) * d.m).add_(torch.bitwise_left_shift(1, d.e - 1)).bitwise_right_shift_(d.e)
    return y.clamp_(d.lo, d.hi).to(d.dtype)

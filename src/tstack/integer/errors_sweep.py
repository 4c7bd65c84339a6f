"""Approximation error of each integer op against its float function over realistic input ranges (max and RMS).

Each op runs as in a model, but with a 16-bit output scale, so the figure shows the approximation (polynomial plus
integer rounding) rather than the int8 output quantization, which is the same for every method. ``poly_max`` is the
error of I-BERT's float polynomial itself, the floor any integer version of it can reach.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tstack.errors import SpecError
from tstack.integer import nonlinear as nl
from tstack.integer.quant import qmax

OPS = ("gelu", "exp", "softmax", "layernorm")
OUT_BITS = 16


@dataclass(frozen=True)
class OpError:
    """Error of one integer op over ``domain``; ``x``/``err`` are the points plotted (input value or row index)."""

    op: str
    domain: str
    max_abs: float
    rms: float
    poly_max: float | None
    x: torch.Tensor
    err: torch.Tensor


def _gelu(n: int) -> OpError:
    x = torch.linspace(-8.0, 8.0, n, dtype=torch.float64)  # MiniLM's FC1 outputs span about +-25; GELU is x or 0 beyond 4
    s_in = 8.0 / qmax(16)
    ref = torch.nn.functional.gelu(x)
    p = nl.gelu_params(torch.ones(1, dtype=torch.float64), s_in, float(ref.abs().max()) / qmax(OUT_BITS), OUT_BITS)
    q = torch.round(x / s_in).to(torch.int32)
    out = nl.i_gelu(q[:, None], p)[:, 0].to(torch.float64) * float(ref.abs().max()) / qmax(OUT_BITS)
    xc = torch.clamp(x.abs() / math.sqrt(2.0), max=-nl.ERF_B)
    erf_poly = torch.sign(x) * (nl.ERF_A * (xc + nl.ERF_B) ** 2 + 1.0)
    poly = x * 0.5 * (1.0 + erf_poly)
    return _record("gelu", "x in [-8, 8]", x, out - ref, float((poly - ref).abs().max()))


def _exp(n: int) -> OpError:
    x = torch.linspace(-10.0, 0.0, n, dtype=torch.float64)
    p = nl.softmax_params(1.0, 10, 8)
    s_w = nl.LN2 / 2**p.m
    q = torch.round(x / s_w).to(torch.int32)
    out = nl.i_exp(q, p).to(torch.float64) * nl.EXP_A * s_w**2
    r = torch.linspace(-nl.LN2, 0.0, n, dtype=torch.float64)
    poly_err = (nl.EXP_A * (r + nl.EXP_B) ** 2 + nl.EXP_C - torch.exp(r)).abs().max()
    return _record("exp", "x in [-10, 0]", x, out - torch.exp(x), float(poly_err))


def _softmax(rows: int, bits: int) -> OpError:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(rows, 128, generator=g, dtype=torch.float64) * 3.0  # attention logits of trained BERTs: std 1-4
    scale = 1e-3
    p = nl.softmax_params(scale, 10, bits)
    out = nl.i_softmax(torch.round(logits / scale).to(torch.int32), None, p).to(torch.float64) / 2**bits
    err = out - torch.softmax(logits, dim=-1)
    return _record("softmax", f"128 logits ~ N(0, 3^2), {bits}-bit output", torch.arange(err.numel()).double(), err.flatten(),
                   None)


def _layernorm(rows: int) -> OpError:
    g = torch.Generator().manual_seed(0)
    h = 384
    x = torch.randn(rows, h, generator=g, dtype=torch.float64)
    x[:, :4] *= 20.0  # a few outlier channels, as in trained BERTs
    s_in = float(x.abs().max()) / qmax(16)
    ref = torch.nn.functional.layer_norm(x, (h,))
    s_out = float(ref.abs().max()) / qmax(OUT_BITS)
    p = nl.layernorm_params(torch.ones(h), torch.zeros(h), s_out, OUT_BITS)
    out = nl.i_layernorm(torch.round(x / s_in).to(torch.int32), p).to(torch.float64) * s_out
    err = out - ref
    return _record("layernorm", "H=384, N(0,1) with 4 outlier channels x20", torch.arange(err.numel()).double(),
                   err.flatten(), None)


def _record(op: str, domain: str, x: torch.Tensor, err: torch.Tensor, poly: float | None) -> OpError:
    return OpError(op=op, domain=domain, max_abs=float(err.abs().max()), rms=float(err.square().mean().sqrt()), poly_max=poly,
                   x=x, err=err)


def sweep(ops: list[str], points: int = 4001, softmax_bits: int = 8) -> list[OpError]:
    """Errors of the named ops; a SpecError naming unknown ops."""
    unknown = [o for o in ops if o not in OPS]
    if unknown:
        raise SpecError([f"--op {o!r} is not one of {', '.join(OPS)}" for o in unknown])
    run = {"gelu": lambda: _gelu(points), "exp": lambda: _exp(points), "softmax": lambda: _softmax(64, softmax_bits),
           "layernorm": lambda: _layernorm(64)}
    return [run[o]() for o in ops]

"""An integer-only BERT encoder layer (I-BERT Fig. 2): int8 in, int8 out, integers only in between.

Edges (bits of the integer codes; docs/integer.md proves each bound):
x int8 -> Q, K, V int32 acc -> int8 -> scores int32 -> i-Softmax -> P (softmax_bits, unsigned) -> P V int32 -> int8
-> out-proj int32 -> 16-bit + 16-bit residual (x requantized) -> i-LayerNorm (input < 2**16) -> int8 h1
-> FC1 int32 -> i-GELU (16-bit input) -> int8 -> FC2 int32 -> 16-bit + 16-bit residual (h1) -> i-LayerNorm -> int8.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from tstack.errors import SpecError
from tstack.integer import nonlinear as nl
from tstack.integer import ops
from tstack.integer.quant import Dyadic, dyadic, qmax, quantize_per_channel, requant

ACC_BITS = 31  # every int32 accumulator is below 2**30 (ops.int_linear_weights), so 31 bits bound it with margin
WIDE_BITS = 16  # residual adds and the GELU input are 16-bit codes
POINTS_8 = ("q", "k", "v", "ctx", "h1", "a", "out")  # int8 activations: calibrated by percentile
POINTS_16 = ("o", "r1", "g", "f", "r2")  # 16-bit activations: calibrated by max
# LayerNorm and GELU outputs carry outlier channels; a scale per channel (folded into the next GEMM's weights along K,
# and into the residual requantization) keeps int8 codes fine-grained for all of them.
PER_CHANNEL = ("emb", "h1", "a", "out")


@dataclass(frozen=True)
class QuantConfig:
    """Bit widths and calibration of the integer model; validated when constructed."""

    act_bits: int = 8  # activations feeding GEMMs (torch._int_mm takes int8)
    softmax_bits: int = 8  # I-BERT's softmax output is 8-bit
    exp_bits: int = 10  # S_w = ln2 / 2**exp_bits inside i-exp
    percentile: float = 99.99  # calibrated range of per-tensor int8 activations: this percentile of |x| over real tokens
    per_channel_acts: bool = True  # PER_CHANNEL points get one scale per channel (max over real tokens)

    def __post_init__(self) -> None:
        problems = []
        if not 2 <= self.act_bits <= 8:
            problems.append(f"act_bits={self.act_bits} must be 2..8 (int8 GEMM operands)")
        if not 2 <= self.softmax_bits <= 16:
            problems.append(f"softmax_bits={self.softmax_bits} must be 2..16")
        if not 4 <= self.exp_bits <= 11:
            problems.append(f"exp_bits={self.exp_bits} must be 4..11")
        if not 50.0 <= self.percentile <= 100.0:
            problems.append(f"percentile={self.percentile} must be in [50, 100]")
        if not isinstance(self.per_channel_acts, bool):
            problems.append(f"per_channel_acts={self.per_channel_acts!r} must be true or false")
        if problems:
            raise SpecError(problems, "quantization")


@dataclass(frozen=True)
class IntLayer:
    """Integer constants of one encoder layer: weights, dyadic multipliers and the nonlinear ops' parameters."""

    heads: int
    softmax_bits: int
    q: ops.IntLinear
    k: ops.IntLinear
    v: ops.IntLinear
    o: ops.IntLinear
    fc1: ops.IntLinear
    fc2: ops.IntLinear
    qkv_out: tuple[Dyadic, Dyadic, Dyadic]
    softmax: nl.SoftmaxParams
    ctx_out: Dyadic
    res1: tuple[Dyadic, Dyadic]
    ln1: nl.LayerNormParams
    gelu: nl.GeluParams
    res2: tuple[Dyadic, Dyadic]
    ln2: nl.LayerNormParams


def layer_forward(x: torch.Tensor, mask_add: torch.Tensor | None, p: IntLayer) -> torch.Tensor:
    """int8 (B, S, H) -> int8 (B, S, H): one post-LN encoder layer in integers."""
    q, k, v = (ops.heads(requant(ops.linear(x, w), d), p.heads)
               for w, d in zip((p.q, p.k, p.v), p.qkv_out, strict=True))
    probs = nl.i_softmax(ops.scores(q, k), mask_add, p.softmax)
    ctx = requant(ops.merge_heads(ops.context(probs, v, p.softmax_bits)), p.ctx_out)
    h1 = nl.i_layernorm(ops.residual_add(ops.linear(ctx, p.o), p.res1[0], x, p.res1[1]), p.ln1)
    act = nl.i_gelu(ops.linear(h1, p.fc1), p.gelu)
    return nl.i_layernorm(ops.residual_add(ops.linear(act, p.fc2), p.res2[0], h1, p.res2[1]), p.ln2)


def _linear(module: Any, s_in: torch.Tensor | float, where: str) -> tuple[ops.IntLinear, torch.Tensor]:
    """int8 weights and an int32 bias; returns the accumulator scale per output channel.

    A per-channel input scale s_in[k] is folded into the weights along K before the per-output-channel quantization:
    sum_k (x_k / s_in[k]) (W[n, k] s_in[k]) = sum_k x_k W[n, k].
    """
    w = module.weight.detach().to(torch.float64) * torch.as_tensor(s_in, dtype=torch.float64)
    w_q, acc_scale = quantize_per_channel(w)
    bias = module.bias.detach().to(torch.float64) if module.bias is not None else torch.zeros_like(acc_scale)
    return ops.int_linear_weights(w_q, torch.round(bias / acc_scale).to(torch.int64), where), acc_scale


def _top(scale: torch.Tensor | float) -> float:
    """The largest of a scalar or per-channel scale."""
    return float(torch.as_tensor(scale).max())


def convert_layer(layer: Any, s_x: torch.Tensor | float, amax: dict[str, Any], cfg: QuantConfig,
                  where: str) -> tuple[IntLayer, torch.Tensor | float]:
    """(IntLayer, output scale) of a HF ``BertLayer`` whose int8 input has scale ``s_x``; ``amax`` holds calibrated ranges."""
    a8 = {n: amax[n] / qmax(cfg.act_bits) for n in POINTS_8}
    att, self_att = layer.attention, layer.attention.self
    h = self_att.num_attention_heads
    d = self_att.attention_head_size
    (wq, sq), (wk, sk), (wv, sv) = (_linear(getattr(self_att, n), s_x, f"{where}.{n}") for n in ("query", "key", "value"))
    qkv_out = tuple(dyadic(s / a8[n], ACC_BITS, cfg.act_bits, f"{where}.{n} requant")
                    for s, n in ((sq, "q"), (sk, "k"), (sv, "v")))
    softmax = nl.softmax_params(a8["q"] * a8["k"] / math.sqrt(d), cfg.exp_bits, cfg.softmax_bits)
    ctx_out = dyadic(a8["v"] / 2**cfg.softmax_bits / a8["ctx"], ACC_BITS, cfg.act_bits, f"{where}.context requant")
    wo, so = _linear(att.output.dense, a8["ctx"], f"{where}.attention.output.dense")
    s_r1 = max(amax["o"], amax["r1"], _top(s_x) * qmax(cfg.act_bits)) / qmax(WIDE_BITS)
    res1 = (dyadic(so / s_r1, ACC_BITS, WIDE_BITS, f"{where}.residual1"),
            dyadic(s_x / s_r1, cfg.act_bits, WIDE_BITS, f"{where}.residual1"))
    ln1 = nl.layernorm_params(att.output.LayerNorm.weight, att.output.LayerNorm.bias, a8["h1"], cfg.act_bits)
    w1, s1 = _linear(layer.intermediate.dense, a8["h1"], f"{where}.intermediate.dense")
    s_g = amax["g"] / qmax(WIDE_BITS)
    gelu = nl.gelu_params(s1 / s_g, s_g, a8["a"], cfg.act_bits)
    w2, s2 = _linear(layer.output.dense, a8["a"], f"{where}.output.dense")
    s_r2 = max(amax["f"], amax["r2"], _top(a8["h1"]) * qmax(cfg.act_bits)) / qmax(WIDE_BITS)
    res2 = (dyadic(s2 / s_r2, ACC_BITS, WIDE_BITS, f"{where}.residual2"),
            dyadic(a8["h1"] / s_r2, cfg.act_bits, WIDE_BITS, f"{where}.residual2"))
    ln2 = nl.layernorm_params(layer.output.LayerNorm.weight, layer.output.LayerNorm.bias, a8["out"], cfg.act_bits)
    return IntLayer(heads=h, softmax_bits=cfg.softmax_bits, q=wq, k=wk, v=wv, o=wo, fc1=w1, fc2=w2, qkv_out=qkv_out,
                    softmax=softmax, ctx_out=ctx_out, res1=res1, ln1=ln1, gelu=gelu, res2=res2, ln2=ln2), a8["out"]

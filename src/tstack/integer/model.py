"""Whole integer-only BERT encoders: calibration of activation ranges, conversion from a HF BertModel, integer forward.

Steps of ``convert``: calibrate ranges on real text with forward hooks on the float model; quantize the embedding tables
at one 16-bit scale; convert every encoder layer (tstack.integer.layer); keep the scale of the last int8 output, which
only the dequantizer outside the integer path uses.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from tstack.errors import TstackError
from tstack.integer import fast, ops
from tstack.integer import layer as il
from tstack.integer import nonlinear as nl
from tstack.integer.quant import qmax

EMB_BITS = 16  # embedding tables share one 16-bit scale, so their sum is below 2**15 and feeds i-LayerNorm directly


@dataclass(frozen=True)
class IntEmbeddings:
    """Word, position and token-type tables as 16-bit codes of one scale, and the embedding i-LayerNorm."""

    word: torch.Tensor
    position: torch.Tensor
    token_type: torch.Tensor
    ln: nl.LayerNormParams


@dataclass(frozen=True)
class IntModel:
    """An integer-only encoder: token ids in, int8 codes of the last hidden state out (scale ``out_scale``)."""

    name: str
    config: il.QuantConfig
    embeddings: IntEmbeddings
    layers: tuple[il.IntLayer, ...]
    out_scale: torch.Tensor | float  # one per channel with per-channel activations

    @cached_property
    def fused(self) -> tuple[fast.FusedLayer, ...] | None:
        """The layers laid out for the fused kernels (built once, not saved); None for softmax codes over 8 bits."""
        if self.config.softmax_bits > 8:
            return None
        return tuple(fast.plan(p) for p in self.layers)


def check_bert(model: Any) -> None:
    """A TstackError unless ``model`` is a post-LN HF BertModel with exact (erf) GELU and absolute positions."""
    cfg = getattr(model, "config", None)
    if type(model).__name__ != "BertModel" or cfg is None:
        raise TstackError(f"integer conversion takes a transformers BertModel; got {type(model).__name__}")
    if cfg.hidden_act != "gelu":
        raise TstackError(f"hidden_act={cfg.hidden_act!r}: i-GELU approximates the exact (erf) GELU, 'gelu'")
    if getattr(cfg, "position_embedding_type", "absolute") != "absolute":
        raise TstackError(f"position_embedding_type={cfg.position_embedding_type!r}; only 'absolute' is supported")


def embed(e: IntEmbeddings, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None, fused: bool = False) -> torch.Tensor:
    """Token ids (B, S) -> int8 (B, S, H): 16-bit table lookups summed in int32, then i-LayerNorm."""
    s = input_ids.shape[1]
    if s > e.position.shape[0]:
        raise TstackError(f"sequence length {s} exceeds the model's {e.position.shape[0]} positions")
    x = e.word[input_ids].to(torch.int32).add_(e.position[:s])
    x.add_(e.token_type[token_type_ids] if token_type_ids is not None else e.token_type[0])
    return fast.layernorm(x, e.ln) if fused else nl.i_layernorm(x, e.ln)


def int_forward(m: IntModel, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, fused: bool = True) -> torch.Tensor:
    """int8 codes (B, S, H) of the last hidden state; integer tensors only from the ids to the result.

    ``fused``: the numba kernels of ``tstack.integer.fast`` (the default; models with softmax codes over 8 bits use
    the PyTorch kernels), else the vectorized PyTorch kernels of ``layer.layer_forward``. Both give the same integers.
    """
    mask_add = ops.mask_bias(attention_mask) if attention_mask is not None else None
    plans = m.fused if fused else None
    x = embed(m.embeddings, input_ids, token_type_ids, plans is not None)
    if plans is None:
        for p in m.layers:
            x = il.layer_forward(x, mask_add, p)
        return x
    for f in plans:
        x = fast.forward(x, mask_add, f)
    return x


def dequantize(m: IntModel, codes: torch.Tensor) -> torch.Tensor:
    """The output dequantizer: int8 codes -> float32 hidden states."""
    return codes.to(torch.float32) * m.out_scale


class _Ranges:
    """Forward hooks that record, per calibration point, max |x| or a percentile of |x| over real (unpadded) tokens."""

    def __init__(self, cfg: il.QuantConfig) -> None:
        self.percentile = cfg.percentile
        self.per_channel = il.PER_CHANNEL if cfg.per_channel_acts else ()
        self.mask: torch.Tensor | None = None
        self.amax: dict[str, Any] = {}

    def record(self, name: str, t: Any) -> None:
        t = t[0] if isinstance(t, tuple) else t
        vals = t.detach()[self.mask].abs().to(torch.float32)  # (tokens, channels)
        point = name.split(".")[-1]
        if point in self.per_channel:
            v: Any = vals.amax(dim=0).to(torch.float64).clamp(min=1e-6)  # a channel that never fires keeps a scale
            self.amax[name] = torch.maximum(self.amax[name], v) if name in self.amax else v
            return
        if point in il.POINTS_16:
            v = float(vals.max())
        else:
            v = float(vals.flatten().kthvalue(max(1, math.ceil(vals.numel() * self.percentile / 100.0))).values)
        self.amax[name] = max(self.amax.get(name, 0.0), v)

    def hook(self, module: torch.nn.Module, name: str, inp: bool) -> Any:
        if inp:
            return module.register_forward_pre_hook(lambda _m, args: self.record(name, args[0]))
        return module.register_forward_hook(lambda _m, _args, out: self.record(name, out))


def _points(layer: Any) -> dict[str, tuple[torch.nn.Module, bool]]:
    """Calibration points of a HF BertLayer: (module, whether its input rather than its output is recorded)."""
    a = layer.attention
    return {"q": (a.self.query, False), "k": (a.self.key, False), "v": (a.self.value, False), "ctx": (a.self, False),
            "o": (a.output.dense, False), "r1": (a.output.LayerNorm, True), "h1": (a.output.LayerNorm, False),
            "g": (layer.intermediate.dense, False), "a": (layer.intermediate, False), "f": (layer.output.dense, False),
            "r2": (layer.output.LayerNorm, True), "out": (layer.output.LayerNorm, False)}


def calibrate(model: Any, batches: Iterable[dict[str, torch.Tensor]], cfg: il.QuantConfig) -> dict[str, Any]:
    """Ranges (floats, or float64 tensors per channel) of every calibration point ('emb', 'layer.<i>.<point>')."""
    ranges = _Ranges(cfg)
    handles = [ranges.hook(model.embeddings.LayerNorm, "emb", False)]
    for i, layer in enumerate(model.encoder.layer):
        handles += [ranges.hook(mod, f"layer.{i}.{n}", inp) for n, (mod, inp) in _points(layer).items()]
    seen = 0
    try:
        with torch.inference_mode():
            for batch in batches:
                ranges.mask = batch["attention_mask"].bool()
                model(**batch)
                seen += 1
    finally:
        for handle in handles:
            handle.remove()
    if not seen:
        raise TstackError("calibration needs at least one batch of text")
    return ranges.amax


def convert(model: Any, batches: Iterable[dict[str, torch.Tensor]], cfg: il.QuantConfig, name: str = "model") -> IntModel:
    """An integer-only copy of a HF BertModel, its activation ranges calibrated on ``batches``."""
    check_bert(model)
    model.eval()
    amax = calibrate(model, batches, cfg)
    emb = model.embeddings
    tables = [emb.word_embeddings.weight, emb.position_embeddings.weight, emb.token_type_embeddings.weight]
    s_e = sum(float(t.detach().abs().max()) for t in tables) / qmax(EMB_BITS)
    q16 = [torch.round(t.detach().to(torch.float64) / s_e).to(torch.int16) for t in tables]
    s_x = amax["emb"] / qmax(cfg.act_bits)
    embeddings = IntEmbeddings(*q16, nl.layernorm_params(emb.LayerNorm.weight, emb.LayerNorm.bias, s_x, cfg.act_bits))
    layers = []
    for i, layer in enumerate(model.encoder.layer):
        ranges = {p: amax[f"layer.{i}.{p}"] for p in (*il.POINTS_8, *il.POINTS_16)}
        converted, s_x = il.convert_layer(layer, s_x, ranges, cfg, f"encoder.layer.{i}")
        layers.append(converted)
    return IntModel(name=name, config=cfg, embeddings=embeddings, layers=tuple(layers), out_scale=s_x)

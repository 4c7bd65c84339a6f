"""Fused and unfused PyTorch implementations of each fusion rule (workload.fusion), to be timed on this machine.

Each ``Case`` holds preallocated inputs and two callables computing the same values: ``unfused`` launches one
kernel per framework op (as eager PyTorch does), ``fused`` the fused form:

- point-wise chains (scale+mask+softmax+dropout, dropout+residual+LayerNorm, bias+GeLU): the same function,
  compiled by ``torch.compile`` (inductor's CPU backend fuses it into one or two C++ loops);
- LayerNorm (002 Fig. 12a): the op-by-op decomposition against ``F.layer_norm``'s one kernel;
- Adam (002 Fig. 12a): ``torch.optim.Adam(foreach=False)`` (per tensor, op by op) against ``fused=True``;
- Q/K/V (002 Fig. 12b, 13): three GEMMs against one with concatenated weights, forward and both backward GEMMs;
- attention: explicit QKᵀ, scale, mask, softmax, P·V against ``F.scaled_dot_product_attention`` (its CPU flash
  kernel: no S×S matrix in memory).

Dropout is a multiplication by a precomputed keep mask (and 1/(1 − p)), in both forms, so that both compute the
same values. Every unfused step writes into a preallocated buffer (``out=`` or in place), so the timed loop does
not allocate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from tstack.workload.params import bert_tensor_shapes

DROPOUT = 0.1
EPS = 1e-12
RULES = ("scale-mask-softmax-dropout", "dropout-residual-layernorm", "bias-gelu", "layernorm", "adam", "qkv",
         "attention")


@dataclass
class Case:
    """One rule on one shape: ``unfused()`` and ``fused()`` return the outputs to compare."""

    rule: str
    shape: str
    unfused: Callable[[], object]
    fused: Callable[[], object]
    tolerance: float = 1e-5
    info: dict[str, int] = field(default_factory=dict)


def _keep(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    return (torch.rand(shape, generator=gen) >= DROPOUT).float() / (1 - DROPOUT)


def softmax_chain(x: torch.Tensor, mask: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
    return torch.softmax(x * scale + mask, dim=-1) * keep


def dropout_residual_layernorm(x: torch.Tensor, keep: torch.Tensor, res: torch.Tensor, w: torch.Tensor,
                               b: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x * keep + res, (x.shape[-1],), w, b, EPS)


def bias_gelu(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.gelu(x + b)


def _compiled(fn: Callable) -> Callable:
    """``fn`` compiled by inductor, its C++ kernels recorded by name in torch.profiler (``cpp_fused_*``)."""
    from torch._inductor import config

    config.cpp.enable_kernel_profile = True
    return torch.compile(fn, backend="inductor", dynamic=False, fullgraph=True)


def scale_mask_softmax_dropout(rows: int, s: int, heads: int, gen: torch.Generator, compile_: bool = True) -> Case:
    """Attention probabilities: (B·h, S, S) scores, an additive (B·h/heads… broadcast) key mask."""
    x = torch.randn(rows, s, s, generator=gen)
    mask = torch.where(torch.rand(1, 1, s, generator=gen) < 0.1, -10000.0, 0.0)
    keep = _keep((rows, s, s), gen)
    scale = 1 / math.sqrt(64)
    t1, t2 = torch.empty_like(x), torch.empty_like(x)

    def unfused() -> torch.Tensor:
        torch.mul(x, scale, out=t1)  # scale
        torch.add(t1, mask, out=t2)  # mask
        torch.softmax(t2, dim=-1, out=t1)  # softmax
        return torch.mul(t1, keep, out=t2)  # dropout

    fn = _compiled(softmax_chain) if compile_ else softmax_chain
    return Case("scale-mask-softmax-dropout", f"{rows}×{s}×{s}", unfused, lambda: fn(x, mask, keep, scale))


def dropout_residual_ln(tokens: int, hidden: int, gen: torch.Generator, compile_: bool = True) -> Case:
    x, res = torch.randn(tokens, hidden, generator=gen), torch.randn(tokens, hidden, generator=gen)
    keep = _keep((tokens, hidden), gen)
    w, b = torch.randn(hidden, generator=gen), torch.randn(hidden, generator=gen)
    t1, t2 = torch.empty_like(x), torch.empty_like(x)

    def unfused() -> torch.Tensor:
        torch.mul(x, keep, out=t1)  # dropout
        torch.add(t1, res, out=t2)  # residual
        return F.layer_norm(t2, (hidden,), w, b, EPS)  # layernorm

    fn = _compiled(dropout_residual_layernorm) if compile_ else dropout_residual_layernorm
    return Case("dropout-residual-layernorm", f"{tokens}×{hidden}", unfused, lambda: fn(x, keep, res, w, b), 1e-4)


def bias_gelu_case(tokens: int, ffn: int, gen: torch.Generator, compile_: bool = True) -> Case:
    x, b = torch.randn(tokens, ffn, generator=gen), torch.randn(ffn, generator=gen)
    t1, t2 = torch.empty_like(x), torch.empty_like(x)

    def unfused() -> torch.Tensor:
        torch.add(x, b, out=t1)
        return torch._C._nn.gelu(t1, out=t2)

    fn = _compiled(bias_gelu) if compile_ else bias_gelu
    return Case("bias-gelu", f"{tokens}×{ffn}", unfused, lambda: fn(x, b))


LAYERNORM_STEPS = ("mean", "sub", "square", "mean", "add-eps", "rsqrt", "mul-rstd", "mul-gamma", "add-beta")


def layernorm(tokens: int, hidden: int, gen: torch.Generator) -> Case:
    """LayerNorm op by op (LAYERNORM_STEPS, one kernel each) against ``F.layer_norm`` (one kernel)."""
    x = torch.randn(tokens, hidden, generator=gen)
    w, b = torch.randn(hidden, generator=gen), torch.randn(hidden, generator=gen)
    mu, var = torch.empty(tokens, 1), torch.empty(tokens, 1)
    d, t = torch.empty_like(x), torch.empty_like(x)

    def unfused() -> torch.Tensor:
        torch.mean(x, dim=-1, keepdim=True, out=mu)
        torch.sub(x, mu, out=d)
        torch.mul(d, d, out=t)
        torch.mean(t, dim=-1, keepdim=True, out=var)
        var.add_(EPS)
        var.rsqrt_()
        torch.mul(d, var, out=t)
        t.mul_(w)
        return t.add_(b)

    return Case("layernorm", f"{tokens}×{hidden}", unfused, lambda: F.layer_norm(x, (hidden,), w, b, EPS), 1e-4)


def adam(shapes: list[tuple[int, ...]], gen: torch.Generator) -> Case:
    """One Adam step over parameters of ``shapes``: for-loop implementation against the fused CPU kernel. Both
    optimizers start from the same parameters, gradients and states, and step once per call."""
    params = [torch.randn(s, generator=gen) for s in shapes]
    grads = [torch.randn(s, generator=gen) * 1e-2 for s in shapes]

    def make(**kw: bool) -> tuple[list[torch.Tensor], torch.optim.Adam]:
        ps = [torch.nn.Parameter(p.clone()) for p in params]
        for p, g in zip(ps, grads):
            p.grad = g.clone()
        return ps, torch.optim.Adam(ps, lr=1e-3, **kw)

    (pu, ou), (pf, of) = make(foreach=False), make(fused=True)

    def unfused() -> list[torch.Tensor]:
        ou.step()
        return pu

    def fused() -> list[torch.Tensor]:
        of.step()
        return pf

    return Case("adam", f"{len(shapes)} tensors, {sum(math.prod(s) for s in shapes)} parameters", unfused, fused,
                1e-6, {"tensors": len(shapes), "params": sum(math.prod(s) for s in shapes)})


def qkv(tokens: int, hidden: int, gen: torch.Generator) -> Case:
    """Q/K/V projections forward and both backward GEMMs: three of each against one with concatenated weights."""
    x = torch.randn(tokens, hidden, generator=gen)
    ws = [torch.randn(hidden, hidden, generator=gen) / math.sqrt(hidden) for _ in range(3)]
    dys = [torch.randn(tokens, hidden, generator=gen) for _ in range(3)]
    w_cat, dy_cat = torch.cat(ws), torch.cat(dys, dim=1)
    ys = [torch.empty(tokens, hidden) for _ in range(3)]
    dxs = [torch.empty(tokens, hidden) for _ in range(3)]
    dws = [torch.empty(hidden, hidden) for _ in range(3)]
    y_cat, dx_cat, dw_cat = torch.empty(tokens, 3 * hidden), torch.empty(tokens, hidden), torch.empty(3 * hidden, hidden)

    def unfused() -> list[torch.Tensor]:
        for w, dy, y, dx, dw in zip(ws, dys, ys, dxs, dws):
            torch.mm(x, w.t(), out=y)  # forward
            torch.mm(dy, w, out=dx)  # backward, activations
            torch.mm(dy.t(), x, out=dw)  # backward, weights
        dxs[0].add_(dxs[1]).add_(dxs[2])  # the three input gradients summed (autograd's accumulation)
        return [*ys, dxs[0], *dws]

    def fused() -> list[torch.Tensor]:
        torch.mm(x, w_cat.t(), out=y_cat)
        torch.mm(dy_cat, w_cat, out=dx_cat)
        torch.mm(dy_cat.t(), x, out=dw_cat)
        return [*y_cat.split(hidden, dim=1), dx_cat, *dw_cat.split(hidden)]  # views of the concatenated results

    return Case("qkv", f"{tokens}×{hidden}", unfused, fused, 1e-3)


def attention(batch: int, heads: int, s: int, d: int, gen: torch.Generator) -> Case:
    """(B, h, S, d) inputs: ``scaled_dot_product_attention`` then runs its CPU flash kernel (3-d inputs fall back
    to the op-by-op math path)."""
    q, k, v = (torch.randn(batch, heads, s, d, generator=gen) for _ in range(3))
    mask = torch.where(torch.rand(1, 1, 1, s, generator=gen) < 0.1, -10000.0, 0.0)
    n = batch * heads
    q3, k3, v3 = q.view(n, s, d), k.view(n, s, d), v.view(n, s, d)
    scores, probs, out = torch.empty(n, s, s), torch.empty(n, s, s), torch.empty(n, s, d)
    scale = 1 / math.sqrt(d)

    def unfused() -> torch.Tensor:
        torch.bmm(q3, k3.transpose(1, 2), out=scores)
        scores.mul_(scale)
        scores.view(batch, heads, s, s).add_(mask)
        torch.softmax(scores, dim=-1, out=probs)
        return torch.bmm(probs, v3, out=out).view(batch, heads, s, d)

    def fused() -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)

    return Case("attention", f"{batch}×{heads}×{s}×{d}", unfused, fused, 1e-4)


def cases(tokens: int = 512, hidden: int = 256, heads: int = 4, seq: int = 128, layers: int = 2,
          vocab: int = 2048, seed: int = 0, compile_: bool = True) -> list[Case]:
    """One case per rule at BERT-like sizes: ``tokens`` = batch·seq rows of width ``hidden``."""
    gen = torch.Generator().manual_seed(seed)
    batch_heads = tokens // seq * heads
    return [
        scale_mask_softmax_dropout(batch_heads, seq, heads, gen, compile_),
        dropout_residual_ln(tokens, hidden, gen, compile_),
        bias_gelu_case(tokens, 4 * hidden, gen, compile_),
        layernorm(tokens, hidden, gen),
        adam(bert_tensor_shapes(hidden, 4 * hidden, layers, vocab), gen),
        qkv(tokens, hidden, gen),
        attention(tokens // seq, heads, seq, hidden // heads, gen),
    ]


def max_difference(a: object, b: object) -> float:
    """The largest absolute difference between two outputs (tensors or lists of tensors)."""
    xs = a if isinstance(a, list) else [a]
    ys = b if isinstance(b, list) else [b]
    return max(float((x.detach() - y.detach()).abs().max()) for x, y in zip(xs, ys))

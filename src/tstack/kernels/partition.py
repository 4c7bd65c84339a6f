"""Holistic model partitioning (003 §III-B): partial-head update (P), column-based algorithm (C), feed-forward splitting (F).

One ``Plan`` says which of the three are on and their block sizes; ``mha(...)`` and ``split_ffn(...)`` run any
combination, so the variants are data, not classes:

- P (§III-B1, Fig. 5b): heads are processed ``head_block`` at a time: per-group Q/K/V-Gen with the group's rows of
  W^Q/W^K/W^V, the group's attention, then a *partial attention FC* with the group's columns of W^O, reduce-summed
  into Z. Without P the whole layer is one group (the baseline order, one attention FC).
- C (§III-B2, Fig. 5c, eq. 4): K and V are generated and consumed ``chunk`` keys at a time; the softmax division is
  done last (lazy softmax). Unlike the paper's code, a running row maximum is kept (acc and the denominator are
  rescaled by exp(m_old − m_new) when it grows), so exp never overflows whatever the scores.
- F (§III-B3, Fig. 5e): W1's rows (output features) and W2's columns are cut into ``ffn_blocks`` blocks; each block
  is activated on its own and its linear trans-2 product is reduce-summed. The block count is independent of h.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from tstack.errors import SpecError

VARIANTS = ("base", "P", "C", "F", "PC", "PF", "CF", "PCF")


@dataclass(frozen=True)
class Plan:
    """Which partitionings are on (P, C, F) and their block sizes; validated when constructed."""

    partial_head: bool = False
    column: bool = False
    ffn_split: bool = False
    head_block: int = 1
    chunk: int = 64
    ffn_blocks: int = 4

    def __post_init__(self) -> None:
        problems = [f"{n}={getattr(self, n)!r} must be true or false" for n in ("partial_head", "column", "ffn_split")
                    if not isinstance(getattr(self, n), bool)]
        for name in ("head_block", "chunk", "ffn_blocks"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                problems.append(f"{name}={v!r} must be an integer ≥ 1")
        if problems:
            raise SpecError(problems, "partition plan")

    @classmethod
    def of(cls, variant: str, head_block: int = 1, chunk: int = 64, ffn_blocks: int = 4) -> Plan:
        """The plan of a variant name: 'base' or letters from P, C, F in that order (e.g. 'PC', 'PCF')."""
        if variant not in VARIANTS:
            raise SpecError([f"variant={variant!r} is not one of {', '.join(VARIANTS)}"], "partition plan")
        return cls("P" in variant, "C" in variant, "F" in variant, head_block, chunk, ffn_blocks)

    @property
    def name(self) -> str:
        letters = "P" * self.partial_head + "C" * self.column + "F" * self.ffn_split
        return letters or "base"


def blocks(n: int, size: int) -> Iterator[tuple[int, int]]:
    """[start, end) ranges of at most ``size`` covering 0..n."""
    for start in range(0, n, size):
        yield start, min(n, start + size)


def lazy_softmax_attention(q: torch.Tensor, kv: Callable[[int, int], tuple[torch.Tensor, torch.Tensor]], n_keys: int,
                           chunk: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Column-based attention (003 §III-B2, eq. 4, with a running maximum): Softmax(q·Kᵀ + mask)·V.

    q: (B, g, S, d), scaled by the caller. ``kv(start, end)`` generates K, V of keys [start, end) as (B, g, c, d).
    mask: additive, broadcastable to (B, g, S, n_keys), or None.
    """
    m = torch.full((*q.shape[:-1], 1), torch.finfo(q.dtype).min, dtype=q.dtype)  # running max: (B, g, S, 1)
    denom = torch.zeros_like(m)  # Σ_β exp(q·k_β − m)
    acc = torch.zeros(q.shape, dtype=q.dtype)  # Σ_α exp(q·k_α − m)·v_α: (B, g, S, d), contiguous
    for start, end in blocks(n_keys, chunk):
        k, v = kv(start, end)
        s = q @ k.transpose(-1, -2)  # partial scores: (B, g, S, c)
        if mask is not None:
            s = s + mask[..., start:end]
        m_new = torch.maximum(m, s.amax(dim=-1, keepdim=True))
        rescale = (m - m_new).exp_()  # 1 unless the maximum grew
        p = s.sub_(m_new).exp_()  # partial exponentiation, in the scores' buffer
        denom.mul_(rescale).add_(p.sum(dim=-1, keepdim=True))
        acc.mul_(rescale)
        acc.view(-1, *acc.shape[-2:]).baddbmm_(p.view(-1, *p.shape[-2:]), v.reshape(-1, *v.shape[-2:]))  # acc += p·v
        m = m_new
    return acc.div_(denom)  # lazy division


@dataclass(frozen=True)
class AttentionWeights:
    """Q/K/V-Gen and attention-FC parameters of one multi-head attention; K/V weights None without K/V-Gen."""

    heads: int
    wq: torch.Tensor
    bq: torch.Tensor | None
    wk: torch.Tensor | None
    bk: torch.Tensor | None
    wv: torch.Tensor | None
    bv: torch.Tensor | None
    wo: torch.Tensor
    bo: torch.Tensor | None

    @classmethod
    def of(cls, self_attention: torch.nn.Module, out_dense: torch.nn.Linear) -> AttentionWeights:
        """From a module with HF ``BertSelfAttention`` names (``key``/``value`` optional) and the attention-FC Linear."""
        sa = self_attention
        key, value = getattr(sa, "key", None), getattr(sa, "value", None)
        return cls(sa.num_attention_heads, sa.query.weight, sa.query.bias, key.weight if key is not None else None,
                   key.bias if key is not None else None, value.weight if value is not None else None,
                   value.bias if value is not None else None, out_dense.weight, out_dense.bias)


def _rows(b: torch.Tensor | None, lo: int, hi: int) -> torch.Tensor | None:
    return None if b is None else b[lo:hi]


def _head_group(x: torch.Tensor, memory: torch.Tensor, w: AttentionWeights, heads: tuple[int, int],
                mask: torch.Tensor | None, plan: Plan) -> torch.Tensor:
    """Attention of heads [lo, hi): Q/K/V-Gen with their weight rows, then Softmax(QKᵀ)V; returns (B, S, g·d)."""
    lo, hi = heads
    g, d = hi - lo, w.wq.shape[0] // w.heads
    r0, r1 = lo * d, hi * d
    b, s_q, _ = x.shape
    n_keys = memory.shape[1]
    q = F.linear(x, w.wq[r0:r1], _rows(w.bq, r0, r1)).view(b, s_q, g, d).transpose(1, 2) * d ** -0.5  # (B, g, S, d)
    if mask is not None and mask.shape[-3] != 1:
        mask = mask[..., lo:hi, :, :]  # a per-head mask: this group's heads

    def kv(start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        src = memory[:, start:end]  # (B, c, H)
        if w.wk is None:  # multi-head attention without K/V-Gen: the memory split into heads
            kv_ = src[..., r0:r1].reshape(b, end - start, g, d).transpose(1, 2)
            return kv_, kv_
        k = F.linear(src, w.wk[r0:r1], _rows(w.bk, r0, r1)).view(b, end - start, g, d).transpose(1, 2)  # (B, g, c, d)
        v = F.linear(src, w.wv[r0:r1], _rows(w.bv, r0, r1)).view(b, end - start, g, d).transpose(1, 2)
        return k, v

    if plan.column:
        a = lazy_softmax_attention(q, kv, n_keys, plan.chunk, mask)
    else:
        k, v = kv(0, n_keys)
        scores = q @ k.transpose(-1, -2)  # (B, g, S, S_k)
        if mask is not None:
            scores = scores + mask
        a = torch.softmax(scores, dim=-1) @ v
    return a.transpose(1, 2).reshape(b, s_q, g * d)


def mha(x: torch.Tensor, w: AttentionWeights, mask: torch.Tensor | None, plan: Plan,
        memory: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-head (self-)attention through the attention FC, Z = Concat(A_i)·W^Oᵀ + b (003 eq. 2), under ``plan``.

    x: (B, S, H); memory: the K/V source (B, S_k, H), x itself for self-attention. Returns Z: (B, S, H), before the
    residual and LayerNorm.
    """
    memory = x if memory is None else memory
    b, s_q, _ = x.shape
    group = min(plan.head_block, w.heads) if plan.partial_head else w.heads
    d = w.wq.shape[0] // w.heads
    wo_t = w.wo.t()  # (H_in, H_out): the group's rows of it are the group's columns of W^O
    z = None
    for lo, hi in blocks(w.heads, group):
        a = _head_group(x, memory, w, (lo, hi), mask, plan).reshape(b * s_q, -1)  # (B·S, g·d)
        part = wo_t[lo * d:hi * d]
        if z is None:  # partial attention FC; the bias once, with the first group
            z = torch.addmm(w.bo, a, part) if w.bo is not None else a @ part
        else:
            z.addmm_(a, part)  # reduce-sum (003 Fig. 5b)
    return z.view(b, s_q, -1)


def split_ffn(x: torch.Tensor, dense1: torch.nn.Linear, act: Callable[[torch.Tensor], torch.Tensor],
              dense2: torch.nn.Linear, n_blocks: int) -> torch.Tensor:
    """O = Σ_j act(x·W1_jᵀ + b1_j)·W2_jᵀ + b2 over ``n_blocks`` blocks of d_FF (003 §III-B3); x (B, S, H) -> (B, S, H)."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])  # (B·S, H)
    n_ff = dense1.out_features
    size = -(-n_ff // n_blocks)
    w2_t = dense2.weight.t()  # (F, H): rows of it are the block's columns of W2
    out = None
    for lo, hi in blocks(n_ff, size):
        t1 = act(F.linear(x2, dense1.weight[lo:hi], _rows(dense1.bias, lo, hi)))  # (B·S, F_j): linear trans-1 + act
        if out is None:
            out = torch.addmm(dense2.bias, t1, w2_t[lo:hi]) if dense2.bias is not None else t1 @ w2_t[lo:hi]
        else:
            out.addmm_(t1, w2_t[lo:hi])  # linear trans-2 of the block, reduce-summed
    return out.view(*lead, -1)

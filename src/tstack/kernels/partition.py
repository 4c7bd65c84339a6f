"""Holistic model partitioning (003 §III-B): partial-head update (P), column-based algorithm (C), feed-forward splitting (F).

One ``Plan`` says which of the three are on and their block sizes; ``mha(...)`` and ``split_ffn(...)`` run any
combination, so the variants are data, not classes:

- P (§III-B1, Fig. 5b): heads are processed a group at a time: per-group Q/K/V-Gen with the group's rows of
  W^Q/W^K/W^V, the group's attention, then a *partial attention FC* with the group's columns of W^O, reduce-summed
  into Z. Without P the whole layer is one group (the baseline order, one attention FC).
- C (§III-B2, Fig. 5c, eq. 4): K and V are generated and consumed a chunk of keys at a time; the softmax division is
  done last (lazy softmax). Unlike the paper's code, a running row maximum is kept (acc and the denominator are
  rescaled by exp(m_old − m_new) when it grows), so exp never overflows whatever the scores.
- F (§III-B3, Fig. 5e): W1's rows (output features) and W2's columns are cut into blocks; each block is activated on
  its own (in place) and its linear trans-2 product is reduce-summed. The block count is independent of h.

Block sizes left ``None`` are sized per call from the shapes and the per-core L2 (``Plan.attention_blocks``,
``ffn_block``; docs/kernels.md lists what they pick). A head group's Q/K/V-Gen weights are packed once
(``AttentionWeights.grouped``) so that its Q/K/V-Gen, or a chunk's K/V-Gen, is one GEMM; the reduce-sums start
from bias + residual, so the residual add is no extra pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from tstack import checks
from tstack.errors import SpecError
from tstack.host import host_caches

VARIANTS = ("base", "P", "C", "F", "PC", "PF", "CF", "PCF")
L2_FALLBACK = 1 << 20  # byte: the L2 assumed where sysfs does not say
QKV_GEMM_WIDTH = 768  # columns (3·g·d) from which a group's Q/K/V-Gen GEMM runs at full speed (MKL, 1 thread: 512
#                       columns lose ~10%); 4 heads of 64
MIN_CHUNK = 128  # keys: the fewest rows a chunk's K/V-Gen GEMM gets
FFN_MIN_BLOCK = 512  # d_FF columns: the narrowest linear trans-1 block (256 columns lose ~10%)
EXP_FLOOR = -87.0  # exp's input floor: exp(-87) ≈ 1.6e-38 is still normal. Below it (masked keys, far scores)
#                   torch.exp takes a slow path for the underflowing elements, ~200× slower (19 ms instead of
#                   0.09 ms for 4×256×256); what the floor changes is a weight of 1.6e-38 instead of 0.


def l2_bytes() -> int:
    """The per-core L2 size (byte) from sysfs: the cache a partition's working set is sized for."""
    l2 = host_caches().get(2)
    return l2.size if l2 is not None else L2_FALLBACK


@dataclass(frozen=True)
class Plan:
    """Which partitionings are on (P, C, F) and their block sizes (None: sized from the L2 per call)."""

    partial_head: bool = False
    column: bool = False
    ffn_split: bool = False
    head_block: int | None = None
    chunk: int | None = None
    ffn_blocks: int | None = None

    def __post_init__(self) -> None:
        problems = [f"{n}={getattr(self, n)!r} must be true or false" for n in ("partial_head", "column", "ffn_split")
                    if not isinstance(getattr(self, n), bool)]
        for name in ("head_block", "chunk", "ffn_blocks"):
            checks.size_or_auto(problems, name, getattr(self, name), "to size it from the L2 cache")
        if problems:
            raise SpecError(problems, "partition plan")

    @classmethod
    def of(cls, variant: str, head_block: int | None = None, chunk: int | None = None,
           ffn_blocks: int | None = None) -> Plan:
        """The plan of a variant name: 'base' or letters from P, C, F in that order (e.g. 'PC', 'PCF')."""
        if variant not in VARIANTS:
            raise SpecError([f"variant={variant!r} is not one of {', '.join(VARIANTS)}"], "partition plan")
        return cls("P" in variant, "C" in variant, "F" in variant, head_block, chunk, ffn_blocks)

    @property
    def name(self) -> str:
        letters = "P" * self.partial_head + "C" * self.column + "F" * self.ffn_split
        return letters or "base"

    def attention_blocks(self, heads: int, d: int, s_q: int, n_keys: int, cache_bytes: int | None = None) -> tuple[int, int]:
        """(heads per step, keys per chunk) for these shapes: h without P, S_k without C; explicit sizes as given.

        Sized ones fit one step's score block, g·S_q·c fp32, in ``cache_bytes`` (the per-core L2). The chunk is every
        key if the block of the narrowest head group fits, else the most keys that fit (a multiple of 64, at least
        ``MIN_CHUNK``). The head group is then the largest divisor of h, at most h/2 (P always splits the heads),
        whose block still fits, and at least the narrowest group whose Q/K/V-Gen GEMM is ``QKV_GEMM_WIDTH`` wide.
        """
        cache_bytes = cache_bytes or l2_bytes()
        divisors = [n for n in range(1, heads // 2 + 1) if heads % n == 0] or [1]
        narrowest = next((n for n in divisors if 3 * n * d >= QKV_GEMM_WIDTH), divisors[-1])
        chunk = n_keys
        if self.column:
            fit = cache_bytes // (4 * min(self.head_block or narrowest, heads) * s_q) // 64 * 64
            chunk = min(n_keys, self.chunk or (n_keys if fit >= n_keys else max(MIN_CHUNK, fit)))
        if not self.partial_head:
            return heads, chunk
        if self.head_block:
            return min(self.head_block, heads), chunk
        return max([n for n in divisors if n * s_q * chunk * 4 <= cache_bytes] + [narrowest]), chunk


def ffn_block(n_blocks: int | None, rows: int, d_ff: int, cache_bytes: int | None = None) -> int:
    """d_FF columns per feed-forward block: ⌈d_FF / n_blocks⌉, or (None) the widest multiple of 64 whose linear
    trans-1 block, rows·F_j fp32, fits ``cache_bytes`` (the per-core L2), at least ``FFN_MIN_BLOCK``."""
    if n_blocks:
        return -(-d_ff // n_blocks)
    return min(d_ff, max(FFN_MIN_BLOCK, (cache_bytes or l2_bytes()) // (4 * rows) // 64 * 64))


def blocks(n: int, size: int) -> Iterator[tuple[int, int]]:
    """[start, end) ranges of at most ``size`` covering 0..n."""
    for start in range(0, n, size):
        yield start, min(n, start + size)


def lazy_softmax_attention(q: torch.Tensor, kv: Callable[[int, int], tuple[torch.Tensor, torch.Tensor]], n_keys: int,
                           chunk: int, mask: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Column-based attention (003 §III-B2, eq. 4, with a running maximum): Softmax(q·Kᵀ + mask)·V.

    q: (B, g, S, d), scaled by the caller. ``kv(start, end)`` generates K, V of keys [start, end) as (B, g, c, d).
    mask: additive, broadcastable to (B, g, S, n_keys), or None. out: where the result goes, (B, g, S, d) of any
    strides (e.g. a head-interleaved view); a new tensor when None.
    """
    b, g, s_q, d = q.shape
    acc = denom = m = None
    for start, end in blocks(n_keys, chunk):
        k, v = kv(start, end)
        s = q @ k.transpose(-1, -2)  # partial scores: (B, g, S, c)
        if mask is not None:
            s.add_(mask[..., start:end])
        m_chunk = s.amax(dim=-1, keepdim=True)
        if m is None:  # first chunk: nothing to rescale yet
            m = m_chunk
            p = s.sub_(m).clamp_(min=EXP_FLOOR).exp_()  # partial exponentiation, in the scores' buffer
            denom = p.sum(dim=-1, keepdim=True)  # Σ_β exp(q·k_β − m)
            acc = p @ v  # Σ_α exp(q·k_α − m)·v_α: (B, g, S, d)
            del k, v, s, p
            continue
        m_new = torch.maximum(m, m_chunk, out=m_chunk)
        rescale = m.sub_(m_new).exp_()  # exp(m_old − m_new): 1 unless the maximum grew
        p = s.sub_(m_new).clamp_(min=EXP_FLOOR).exp_()
        denom.mul_(rescale).add_(p.sum(dim=-1, keepdim=True))
        acc.mul_(rescale).view(b * g, s_q, d).baddbmm_(p.view(b * g, s_q, -1), v.reshape(b * g, -1, d))  # acc += p·v
        m = m_new
        del k, v, s, p  # freed before the next chunk's are made: one chunk's buffers at a time, reused warm
    return torch.div(acc, denom, out=out)  # lazy division


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

    @property
    def kv_gen(self) -> bool:
        return self.wk is not None

    @property
    def head_size(self) -> int:
        return self.wq.shape[0] // self.heads

    def versions(self) -> tuple:
        """Identity and version of every Q/K/V tensor: equal while no weight was replaced or changed in place."""
        return tuple(None if t is None else (t.data_ptr(), t._version)
                     for t in (self.wq, self.bq, self.wk, self.bk, self.wv, self.bv))

    def grouped(self, group: int) -> list[GroupWeights]:
        """Q/K/V-Gen weights of each group of ``group`` heads, packed (a copy): [W^Q_g·d^-½; W^K_g; W^V_g] rows and
        their biases, so that a group's Q/K/V-Gen, and its K/V-Gen alone, is one GEMM, and Q comes out scaled."""
        d, scale = self.head_size, self.head_size ** -0.5
        parts = [(self.wq, self.bq, scale)] + ([(self.wk, self.bk, 1.0), (self.wv, self.bv, 1.0)] if self.kv_gen else [])
        groups = []
        for lo, hi in blocks(self.heads, group):
            rows = slice(lo * d, hi * d)
            w = torch.cat([wt[rows] * s for wt, _, s in parts])
            b = None
            if any(bt is not None for _, bt, _ in parts):
                b = torch.cat([bt[rows] * s if bt is not None else w.new_zeros((hi - lo) * d) for _, bt, s in parts])
            groups.append(GroupWeights(lo, hi, w, b))
        return groups


@dataclass(frozen=True)
class GroupWeights:
    """One head group's packed Q/K/V-Gen weight rows [W^Q_g·d^-½; W^K_g; W^V_g] (W^Q_g·d^-½ alone without K/V-Gen)
    and bias."""

    lo: int
    hi: int
    w: torch.Tensor
    b: torch.Tensor | None


def _group_qkv(x: torch.Tensor, memory: torch.Tensor, w: AttentionWeights, gw: GroupWeights,
               one_gemm: bool) -> tuple[torch.Tensor, Callable[[int, int], tuple[torch.Tensor, torch.Tensor]]]:
    """The group's scaled Q (B, g, S, d) and its K/V source: ``kv(start, end)`` -> K, V of those keys as (B, g, c, d).

    one_gemm (self-attention, every key in one chunk): Q/K/V-Gen in one GEMM. Else Q-Gen alone and, per chunk, one K/V-Gen
    GEMM with the group's packed rows, or (without K/V-Gen, 003 Table II †) the memory's columns of the group's heads.
    """
    b, s_q, hidden = x.shape
    g, d = gw.hi - gw.lo, w.head_size
    if one_gemm:
        qkv = F.linear(x.reshape(b * s_q, hidden), gw.w, gw.b).view(b, s_q, 3, g, d).permute(2, 0, 3, 1, 4)
        return qkv[0], lambda start, end: (qkv[1][:, :, start:end], qkv[2][:, :, start:end])
    q = F.linear(x.reshape(b * s_q, hidden), gw.w[:g * d], None if gw.b is None else gw.b[:g * d])
    q = q.view(b, s_q, g, d).transpose(1, 2)
    if not w.kv_gen:
        heads = memory[..., gw.lo * d:gw.hi * d].unflatten(-1, (g, d)).transpose(1, 2)  # (B, g, S_k, d)
        return q, lambda start, end: (heads[:, :, start:end],) * 2
    wkv, bkv = gw.w[g * d:], None if gw.b is None else gw.b[g * d:]

    def kv(start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        c = end - start
        kv_ = F.linear(memory[:, start:end].reshape(b * c, hidden), wkv, bkv).view(b, c, 2, g, d).permute(2, 0, 3, 1, 4)
        return kv_[0], kv_[1]

    return q, kv


def _accumulator(residual: torch.Tensor | None, bias: torch.Tensor | None, shape: tuple[int, int],
                 dtype: torch.dtype) -> torch.Tensor:
    """A reduce-sum's starting value, a new contiguous tensor: residual + bias, either, or zeros."""
    if residual is None:
        return torch.zeros(shape, dtype=dtype) if bias is None else bias.expand(shape).contiguous()
    residual = residual.reshape(shape)
    return residual.clone(memory_format=torch.contiguous_format) if bias is None else torch.add(residual, bias)


def mha(x: torch.Tensor, w: AttentionWeights, mask: torch.Tensor | None, plan: Plan,
        memory: torch.Tensor | None = None, groups: list[GroupWeights] | None = None,
        residual: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-head (self-)attention through the attention FC, Z = Concat(A_i)·W^Oᵀ + b (003 eq. 2), under ``plan``.

    x: (B, S, H); memory: the K/V source (B, S_k, H), None for self-attention. groups: ``w.grouped(group)`` for the
    plan's head group, kept by the caller (packed here when None). residual (B, S, H): added to Z, as the reduce-sum's
    starting value. Returns Z (+ residual): (B, S, H), before the LayerNorm.
    """
    b, s_q, _ = x.shape
    n_keys, d = (x if memory is None else memory).shape[1], w.head_size
    group, chunk = plan.attention_blocks(w.heads, d, s_q, n_keys)
    groups = groups if groups is not None else w.grouped(group)
    wo_t = w.wo.t()  # (H_in, H_out): the group's rows of it are the group's columns of W^O
    z = _accumulator(residual, w.bo, (b * s_q, w.wo.shape[0]), x.dtype)
    for gw in groups:  # one group's buffers at a time: _group_attention's die with it
        a = _group_attention(x, memory, w, gw, mask, plan.column, chunk)
        z.addmm_(a, wo_t[gw.lo * d:gw.hi * d])  # partial attention FC, reduce-summed (Fig. 5b)
        del a
    return z.view(b, s_q, -1)


def _group_attention(x: torch.Tensor, memory: torch.Tensor | None, w: AttentionWeights, gw: GroupWeights,
                     mask: torch.Tensor | None, column: bool, chunk: int) -> torch.Tensor:
    """The group's attention results side by side, (B·S, g·d): softmax (C: lazy softmax over chunks) of its heads."""
    b, s_q, _ = x.shape
    g, d, n_keys = gw.hi - gw.lo, w.head_size, (x if memory is None else memory).shape[1]
    q, kv = _group_qkv(x, x if memory is None else memory, w, gw, memory is None and w.kv_gen and chunk >= n_keys)
    group_mask = mask if mask is None or mask.shape[-3] == 1 else mask[..., gw.lo:gw.hi, :, :]
    a = torch.empty(b, s_q, g, d, dtype=x.dtype)  # the group's A_i side by side
    if column:
        lazy_softmax_attention(q, kv, n_keys, chunk, group_mask, a.transpose(1, 2))
    else:
        k, v = kv(0, n_keys)
        scores = q @ k.transpose(-1, -2)  # (B, g, S, S_k)
        if group_mask is not None:
            scores.add_(group_mask)
        torch.matmul(torch.softmax(scores, dim=-1, out=scores), v, out=a.transpose(1, 2))  # softmax in place
    return a.view(b * s_q, g * d)


def in_place(act: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``act`` applied in its input's buffer where it is a known activation module (ReLU, GELU, SiLU, HF's
    ``GELUActivation``), else ``act`` itself."""
    if isinstance(act, torch.nn.ReLU):
        return torch.relu_
    if isinstance(act, torch.nn.GELU):
        return lambda t: torch.ops.aten.gelu_(t, approximate=act.approximate)
    if isinstance(act, torch.nn.SiLU):
        return lambda t: F.silu(t, inplace=True)
    if type(act).__name__ == "GELUActivation" and getattr(act, "act", None) is F.gelu:
        return torch.ops.aten.gelu_
    return act


def split_ffn(x: torch.Tensor, dense1: torch.nn.Linear, act: Callable[[torch.Tensor], torch.Tensor],
              dense2: torch.nn.Linear, n_blocks: int | None = None, residual: torch.Tensor | None = None) -> torch.Tensor:
    """O = Σ_j act(x·W1_jᵀ + b1_j)·W2_jᵀ + b2 over blocks of d_FF (003 §III-B3); x (B, S, H) -> (B, S, H).

    ``n_blocks`` blocks, or (None) blocks sized for the L2 by ``ffn_block``. The activation runs in place. residual
    (B, S, H): added to O, as the reduce-sum's starting value.
    """
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])  # (B·S, H)
    n_ff = dense1.out_features
    size = ffn_block(n_blocks, x2.shape[0], n_ff)
    act_ = in_place(act)
    w2_t = dense2.weight.t()  # (F, H): rows of it are the block's columns of W2
    out = _accumulator(residual, dense2.bias, (x2.shape[0], dense2.out_features), x.dtype)
    for lo, hi in blocks(n_ff, size):
        t1 = act_(F.linear(x2, dense1.weight[lo:hi], None if dense1.bias is None else dense1.bias[lo:hi]))
        out.addmm_(t1, w2_t[lo:hi])  # linear trans-2 of the block, reduce-summed
        del t1  # freed before the next block's: one T1 block at a time, reused warm
    return out.view(*lead, -1)

"""The int64 oracle: every integer op written element by element on Python ints, plain and slow, for bit-exact tests.

Python ints are exact and unbounded, ``//`` and ``>>`` floor like the kernels' int64 division and arithmetic shift, so
a fast kernel that overflowed or rounded differently would disagree with these functions. Running them on ``Counted``
values tallies every integer operation, which is how tests check ``tstack.integer.costs`` against the algorithms.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from tstack.integer import nonlinear as nl
from tstack.integer.quant import Dyadic

_tally: list[Counter] = []


def _count(kind: str) -> None:
    if _tally:
        _tally[-1][kind] += 1


class Counted(int):
    """An int whose arithmetic counts itself: mul, add (incl. subtract, negate), shift, cmp (incl. abs, min, max), div."""

    def _op(self, kind: str, value: int) -> Counted:
        _count(kind)
        return Counted(value)

    def __add__(self, o: int) -> Counted: return self._op("add", int(self) + int(o))
    def __radd__(self, o: int) -> Counted: return self._op("add", int(o) + int(self))
    def __sub__(self, o: int) -> Counted: return self._op("add", int(self) - int(o))
    def __rsub__(self, o: int) -> Counted: return self._op("add", int(o) - int(self))
    def __neg__(self) -> Counted: return self._op("add", -int(self))
    def __mul__(self, o: int) -> Counted: return self._op("mul", int(self) * int(o))
    def __rmul__(self, o: int) -> Counted: return self._op("mul", int(o) * int(self))
    def __floordiv__(self, o: int) -> Counted: return self._op("div", int(self) // int(o))
    def __rfloordiv__(self, o: int) -> Counted: return self._op("div", int(o) // int(self))
    def __rshift__(self, o: int) -> Counted: return self._op("shift", int(self) >> int(o))
    def __rrshift__(self, o: int) -> Counted: return self._op("shift", int(o) >> int(self))
    def __lshift__(self, o: int) -> Counted: return self._op("shift", int(self) << int(o))
    def __rlshift__(self, o: int) -> Counted: return self._op("shift", int(o) << int(self))
    def __abs__(self) -> Counted: return self._op("cmp", abs(int(self)))

    def __lt__(self, o: int) -> bool:
        _count("cmp")
        return int(self) < int(o)

    def __gt__(self, o: int) -> bool:
        _count("cmp")
        return int(self) > int(o)

    def bit_length(self) -> Counted:
        """A leading-zero count (one priority encoder): counted as one comparison."""
        return self._op("cmp", int(self).bit_length())

    __hash__ = int.__hash__


@contextmanager
def counting() -> Iterator[Counter]:
    """Tally the operations on Counted values inside the block."""
    _tally.append(Counter())
    try:
        yield _tally[-1]
    finally:
        _tally.pop()


def _channels(d: Dyadic, n: int) -> list[tuple[int, int]]:
    """(m, e) of each of ``n`` channels (a scalar multiplier repeated)."""
    m, e = d.m.expand(n).tolist() if d.m.dim() else [int(d.m)] * n, d.e.expand(n).tolist() if d.e.dim() else [int(d.e)] * n
    return list(zip(m, e, strict=True))


def at_least(v: int, bound: int) -> int:
    """max(v, bound): one comparison; the result keeps v's type, so a saturated value is still counted downstream."""
    return type(v)(bound) if v < bound else v


def at_most(v: int, bound: int) -> int:
    """min(v, bound): one comparison, keeping v's type."""
    return type(v)(bound) if v > bound else v


def requant(x: int, m: int, e: int, lo: int, hi: int) -> int:
    """Dyadic requantization of one value: clamp(floor((x m + 2**(e-1)) / 2**e), lo, hi)."""
    return at_most(at_least((x * m + (1 << (e - 1))) >> e, lo), hi)


def requant_row(row: list[int], d: Dyadic) -> list[int]:
    return [requant(x, m, e, d.lo, d.hi) for x, (m, e) in zip(row, _channels(d, len(row)), strict=True)]


def matmul(a: list[list[int]], b: list[list[int]]) -> list[list[int]]:
    """(M, K) x (K, N) by the definition."""
    return [[sum(a[i][k] * b[k][j] for k in range(len(b))) for j in range(len(b[0]))] for i in range(len(a))]


def linear(x: list[list[int]], wt: torch.Tensor, bias: torch.Tensor) -> list[list[int]]:
    """x W^T + b with W^T given as (K, N)."""
    return [[v + b for v, b in zip(row, bias.tolist(), strict=True)] for row in matmul(x, wt.tolist())]


def i_gelu(acc_row: list[int], p: nl.GeluParams) -> list[int]:
    """I-BERT Alg. 2, element by element."""
    out = []
    for a, (m, e), (mo, eo) in zip(acc_row, _channels(p.inp, len(acc_row)), _channels(p.out, len(acc_row)), strict=True):
        q = requant(a, m, e, p.inp.lo, p.inp.hi)
        t = q >> p.k
        sign = (t > 0) - (t < 0)
        u = at_most(abs(t), -p.q_b) + p.q_b
        erf = (u * u + p.q_c) * sign
        out.append(requant(q * ((erf + p.q_1) >> p.k2), mo, eo, p.out.lo, p.out.hi))
    return out


def i_exp(x: int, p: nl.SoftmaxParams) -> int:
    """I-BERT Alg. 3 with q_ln2 = 2**m: z = floor(-x / q_ln2), r = x + z q_ln2, poly(r) >> z."""
    z = (-x) >> p.m
    u = x + (z << p.m) + p.q_b
    return (u * u + p.q_c) >> z


def i_softmax(row: list[int], mask_add: list[int] | None, p: nl.SoftmaxParams) -> list[int]:
    """I-BERT's integer softmax of one row of scores."""
    v = [s + a for s, a in zip(row, mask_add, strict=True)] if mask_add is not None else list(row)
    top = -(1 << 62)
    for s in v:
        top = max(top, s)
    e = [i_exp(requant(s - top, int(p.inp.m), int(p.inp.e), p.inp.lo, p.inp.hi), p) for s in v]
    total = 0
    for x in e:
        total = total + x
    factor = (1 << nl.SOFTMAX_F) // total
    shift = nl.SOFTMAX_F - p.bits
    return [at_most((x * factor + (1 << (shift - 1))) >> shift, (1 << p.bits) - 1) for x in e]


def isqrt(n: int) -> int:
    """I-BERT Alg. 4: Newton from 2**ceil(bits/2), ISQRT_STEPS steps, keeping the smaller iterate."""
    x = 1 << ((n.bit_length() + 1) >> 1)
    for _ in range(nl.ISQRT_STEPS):
        x = min(x, (x + n // x) >> 1)
    return x


def i_layernorm(row: list[int], p: nl.LayerNormParams) -> list[int]:
    """I-BERT's integer LayerNorm of one row."""
    total = 0
    for x in row:
        total = total + x
    mean = total // len(row)
    y = [x - mean for x in row]
    sq = 0
    for v in y:
        sq = sq + v * v
    factor = (1 << nl.LN_F) // isqrt(at_least(sq, 1))
    t = [((v * factor) >> (nl.LN_F - nl.LN_P)) * g + b for v, g, b in zip(y, p.gamma.tolist(), p.beta.tolist(), strict=True)]
    return requant_row(t, p.out)


def residual_add(acc_row: list[int], d_acc: Dyadic, res_row: list[int], d_res: Dyadic) -> list[int]:
    """Both branches requantized to the 16-bit residual scale, then added."""
    return [a + r for a, r in zip(requant_row(acc_row, d_acc), requant_row(res_row, d_res), strict=True)]


def _rows(t: torch.Tensor) -> list[list[int]]:
    return [[int(v) for v in row] for row in t.reshape(-1, t.shape[-1]).tolist()]


def layer_forward(x: torch.Tensor, attention_mask: torch.Tensor | None, p) -> torch.Tensor:
    """One integer encoder layer (tstack.integer.layer.layer_forward) on Python ints, one sequence at a time."""
    out = []
    for b in range(x.shape[0]):
        mask = None if attention_mask is None else [0 if int(v) else -(2**30) for v in attention_mask[b].tolist()]
        out.append(_sequence(_rows(x[b]), mask, p))
    return torch.tensor(out, dtype=torch.int64)


def _sequence(x: list[list[int]], mask: list[int] | None, p) -> list[list[int]]:
    """Steps of one post-LN layer: Q/K/V, per-head softmax(QK^T) V, out-proj + residual + LN, FFN + residual + LN."""
    q, k, v = ([requant_row(r, d) for r in linear(x, w.wt, w.bias)] for w, d in zip((p.q, p.k, p.v), p.qkv_out, strict=True))
    d = len(q[0]) // p.heads
    ctx = [[] for _ in x]
    for h in range(p.heads):
        cols = slice(h * d, (h + 1) * d)
        qh, kh, vh = ([r[cols] for r in m] for m in (q, k, v))
        probs = [i_softmax(r, mask, p.softmax) for r in matmul(qh, [list(c) for c in zip(*kh, strict=True)])]
        for i, r in enumerate(matmul(probs, vh)):
            ctx[i] += r
    ctx = [requant_row(r, p.ctx_out) for r in ctx]
    r1 = [residual_add(a, p.res1[0], r, p.res1[1]) for a, r in zip(linear(ctx, p.o.wt, p.o.bias), x, strict=True)]
    h1 = [i_layernorm(r, p.ln1) for r in r1]
    act = [i_gelu(r, p.gelu) for r in linear(h1, p.fc1.wt, p.fc1.bias)]
    r2 = [residual_add(a, p.res2[0], r, p.res2[1]) for a, r in zip(linear(act, p.fc2.wt, p.fc2.bias), h1, strict=True)]
    return [i_layernorm(r, p.ln2) for r in r2]

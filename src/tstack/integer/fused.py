"""Fused integer kernels for the I-BERT encoder layer, compiled by numba: one pass per nonlinear op instead of ~10.

``nonlinear.py`` writes each op as a chain of vectorized PyTorch ops (about 60 launches and int64 temporaries per
layer); here each op is one loop over rows, parallel over rows, that keeps a row in cache: requantization + head split
of Q/K/V, i-Softmax (mask, max, i-exp, sum, divide, output digit), context requantization + head merge,
residual add + i-LayerNorm, and i-GELU. The GEMMs stay ``torch._int_mm``.

Every kernel computes in int64 exactly the integers of ``nonlinear.py`` (whose int32 steps are proved not to overflow,
so widening changes no value); tests check both against ``tstack.integer.oracle`` bit for bit. The kernels take
integer arrays and Python ints only; ``float_instructions`` lists the floating-point instructions in a kernel's
compiled code (LLVM IR of the kernel and its parallel body), and the tests require that list to be empty: the
compiled counterpart of the ``IntegerOnly`` dispatch guard, which cannot see inside a numba kernel.
"""

from __future__ import annotations

import re

import numba as nb
import numpy as np

from tstack.errors import TstackError
from tstack.integer.costs import ISQRT_NEWTON_STEPS
from tstack.integer.nonlinear import LN_F, LN_P, SOFTMAX_F

_JIT = {"nogil": True, "cache": True}
_FLOAT_IR = re.compile(r"\b(fadd|fsub|fmul|fdiv|frem|fneg|fcmp|sitofp|uitofp|fptosi|fptoui|fpext|fptrunc)\b")


@nb.njit(inline="always", **_JIT)
def _rq(x, m, e, lo, hi):  # numba scalars
    """Dyadic requantization of one int64: clamp((x m + 2**(e-1)) >> e, lo, hi)."""
    y = (x * m + (np.int64(1) << (e - 1))) >> e
    return min(max(y, lo), hi)


@nb.njit(inline="always", **_JIT)
def _isqrt(n):
    """floor(sqrt(n)) for 1 <= n < 2**48: Newton from 2**(number of powers of 4 <= n), ISQRT_NEWTON_STEPS steps."""
    c = np.int64(0)
    p = np.int64(1)
    while c < 32 and p <= n:
        c += 1
        p <<= 2
    x = np.int64(1) << c
    for _ in range(ISQRT_NEWTON_STEPS):
        x = min(x, (x + n // x) >> 1)
    return x


@nb.njit(parallel=True, **_JIT)
def requant_rows(acc, bias, m, e, lo, hi, out):
    """int32 GEMM accumulators (R, N) + int64 bias -> requantized codes (R, N), one requantization per channel."""
    rows, n = acc.shape
    for r in nb.prange(rows):
        for c in range(n):
            out[r, c] = _rq(np.int64(acc[r, c]) + bias[c], m[c], e[c], lo[c], hi[c])


@nb.njit(parallel=True, **_JIT)
def softmax_rows(scores, mask, m, e, lo, mb, q_b, q_c, bits, offset, out):
    """i-Softmax over the last axis of int32 scores (B, h, S, L) with an int32 additive mask (B, L) -> codes - offset.

    Per row: pass 1 the maximum, pass 2 i-exp and the integer sum, pass 3 the exponents times floor(2**48 / sum),
    rounded to ``bits`` bits; ``offset`` (128 for 8-bit codes) makes the result an int8 GEMM operand.
    """
    nb_, nh, ns, nl = scores.shape
    shift = SOFTMAX_F - bits
    half = np.int64(1) << (shift - 1)
    cap = (np.int64(1) << bits) - 1
    for bh in nb.prange(nb_ * nh):
        b, h = bh // nh, bh % nh
        ex = np.empty(nl, dtype=np.int64)  # the row's exponents, kept between passes 2 and 3
        for s in range(ns):
            row = scores[b, h, s]
            mx = np.int64(row[0]) + mask[b, 0]
            for j in range(1, nl):
                mx = max(mx, np.int64(row[j]) + mask[b, j])
            total = np.int64(0)
            for j in range(nl):
                y = _rq(np.int64(row[j]) + mask[b, j] - mx, m, e, lo, 0)
                z = (-y) >> mb
                u = y + (z << mb) + q_b
                ex[j] = (u * u + q_c) >> z
                total += ex[j]
            factor = (np.int64(1) << SOFTMAX_F) // total
            dst = out[b, h, s]
            for j in range(nl):
                dst[j] = min((ex[j] * factor + half) >> shift, cap) - offset


@nb.njit(parallel=True, **_JIT)
def context_merge(acc, v, offset, m, e, lo, hi, out):
    """int32 (B, h, S, d) digit-times-V accumulators + offset * colsum(V) -> requantized int8 (B, S, H), heads merged.

    ``v`` is int8 (B, L, h, d) (a view of the fused Q/K/V output)."""
    nb_, nh, ns, d = acc.shape
    for bh in nb.prange(nb_ * nh):
        b, h = bh // nh, bh % nh
        col = np.zeros(d, dtype=np.int64)
        for s in range(v.shape[1]):
            for j in range(d):
                col[j] += v[b, s, h, j]
        for s in range(ns):
            for j in range(d):
                c = h * d + j
                out[b, s, c] = _rq(np.int64(acc[b, h, s, j]) + offset * col[j], m[c], e[c], lo[c], hi[c])


@nb.njit(inline="always", **_JIT)
def _layernorm_row(y, n, gamma, beta, om, oe, olo, ohi, out_row):
    """i-LayerNorm of one int64 row ``y`` (overwritten with y - mean) into ``out_row`` (nonlinear.i_layernorm)."""
    s = np.int64(0)
    for j in range(n):
        s += y[j]
    mean = s // n
    var = np.int64(0)
    for j in range(n):
        y[j] -= mean
        var += y[j] * y[j]
    factor = (np.int64(1) << LN_F) // _isqrt(max(var, np.int64(1)))
    for j in range(n):
        norm = (y[j] * factor) >> (LN_F - LN_P)
        out_row[j] = _rq(norm * gamma[j] + beta[j], om[j], oe[j], olo[j], ohi[j])


@nb.njit(parallel=True, **_JIT)
def residual_layernorm(acc, bias, am, ae, alo, ahi, res, rm, re_, rlo, rhi,
                       gamma, beta, om, oe, olo, ohi, out):
    """int32 GEMM accumulators (R, H) + bias and int8 residual (R, H), both requantized to 16 bits and added, then
    i-LayerNorm -> int8 (R, H): ops.residual_add followed by nonlinear.i_layernorm in one pass per row."""
    rows, n = acc.shape
    for r in nb.prange(rows):
        y = np.empty(n, dtype=np.int64)
        for j in range(n):
            y[j] = (_rq(np.int64(acc[r, j]) + bias[j], am[j], ae[j], alo[j], ahi[j])
                    + _rq(np.int64(res[r, j]), rm[j], re_[j], rlo[j], rhi[j]))
        _layernorm_row(y, n, gamma, beta, om, oe, olo, ohi, out[r])


@nb.njit(parallel=True, **_JIT)
def layernorm(x, gamma, beta, om, oe, olo, ohi, out):
    """i-LayerNorm of int32 rows (R, H) -> int8 (R, H)."""
    rows, n = x.shape
    for r in nb.prange(rows):
        y = np.empty(n, dtype=np.int64)
        for j in range(n):
            y[j] = x[r, j]
        _layernorm_row(y, n, gamma, beta, om, oe, olo, ohi, out[r])


@nb.njit(parallel=True, **_JIT)
def gelu(acc, bias, im, ie, ilo, ihi, k, q_b, q_c, q_1, k2, om, oe, olo, ohi, out):
    """int32 FC1 accumulators (R, F) + bias -> int8 i-GELU codes (nonlinear.i_gelu)."""
    rows, n = acc.shape
    for r in nb.prange(rows):
        for j in range(n):
            q = _rq(np.int64(acc[r, j]) + bias[j], im[j], ie[j], ilo[j], ihi[j])
            t = q >> k
            u = min(abs(t), -q_b) + q_b
            poly = u * u + q_c
            erf = poly * ((t > 0) - (t < 0))
            h = (erf + q_1) >> k2
            out[r, j] = _rq(h * q, om[j], oe[j], olo[j], ohi[j])


KERNELS = (requant_rows, softmax_rows, context_merge, residual_layernorm, layernorm, gelu)


def float_instructions(kernel: nb.core.registry.CPUDispatcher) -> list[str]:
    """The floating-point LLVM instructions in ``kernel`` (empty for an integer kernel), for every signature it has run
    with. Code loaded from numba's cache cannot be inspected, so an uncached copy is compiled for each signature."""
    if not kernel.signatures:
        raise TstackError(f"{kernel.__name__} has not run yet: there is no compiled code to inspect")
    copy = nb.njit(**{k: v for k, v in kernel.targetoptions.items() if k not in ("cache", "nopython")})(kernel.py_func)
    found: set[str] = set()
    for sig in kernel.signatures:
        copy.compile(sig)
    for ir in copy.inspect_llvm().values():
        found.update(_FLOAT_IR.findall(ir))
    return sorted(found)

"""The fused (numba) integer kernels: bit for bit against the int64 oracle, integer instructions only, same layer output."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tstack.integer import fast, fused, ops, oracle
from tstack.integer import nonlinear as nl
from tstack.integer.quant import dyadic

FAST = settings(max_examples=40, deadline=None)


def _ln_p(n: int, seed: int, s_out: float) -> nl.LayerNormParams:
    g = torch.Generator().manual_seed(seed)
    return nl.layernorm_params(torch.randn(n, generator=g), torch.randn(n, generator=g), s_out, 8)


@FAST
@given(st.lists(st.integers(-(2**30), 2**30 - 1), min_size=3, max_size=3), st.floats(5e-5, 2e-3),
       st.lists(st.integers(-(2**20), 2**20), min_size=3, max_size=3))
def test_gelu_matches_oracle(acc, s_in, bias):
    p = nl.gelu_params(torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64), s_in, 0.05, 8)
    out = np.empty((1, 3), np.int8)
    args = (*fast._channels(p.inp, 3), p.k, p.q_b, p.q_c, p.q_1, p.k2, *fast._channels(p.out, 3))
    fused.gelu(np.array([acc], np.int32), np.array(bias, np.int64), *args, out)
    assert out[0].tolist() == oracle.i_gelu([a + b for a, b in zip(acc, bias, strict=True)], p)


@FAST
@given(st.lists(st.lists(st.integers(-(2**20), 2**20), min_size=6, max_size=6), min_size=1, max_size=4),
       st.floats(1e-5, 1e-2), st.integers(2, 8), st.integers(4, 11), st.integers(0, 5))
def test_softmax_matches_oracle(rows, scale, bits, exp_bits, masked):
    p = nl.softmax_params(scale, exp_bits, bits)
    mask = [0] * (6 - masked) + [ops.MASK_ADD] * masked  # even a fully masked row must agree
    offset = 128 if bits == 8 else 0
    out = np.empty((1, 1, len(rows), 6), np.int8)
    fused.softmax_rows(np.array([[rows]], np.int32), np.array([mask], np.int32), int(p.inp.m), int(p.inp.e),
                       p.inp.lo, p.m, p.q_b, p.q_c, bits, offset, out)
    assert (out[0, 0].astype(np.int64) + offset).tolist() == [oracle.i_softmax(r, mask, p) for r in rows]


def test_softmax_extremes_match_oracle():
    # the largest score magnitudes (d = 128: 128 * 127**2 < 2**21), a one-hot row, an all-equal row, masked keys
    p = nl.softmax_params(1e-2, 11, 8)
    rows = [[2**21] + [-(2**21)] * 511, [0] * 512, [5] * 511 + [2**21]]
    mask = [0] * 500 + [ops.MASK_ADD] * 12
    out = np.empty((1, 1, 3, 512), np.int8)
    fused.softmax_rows(np.array([[rows]], np.int32), np.array([mask], np.int32), int(p.inp.m), int(p.inp.e),
                       p.inp.lo, p.m, p.q_b, p.q_c, 8, 128, out)
    codes = out[0, 0].astype(np.int64) + 128
    assert codes.tolist() == [oracle.i_softmax(r, mask, p) for r in rows]
    assert codes[0, 0] == 255 and codes[1, 500:].sum() == 0


@FAST
@given(st.lists(st.integers(-(2**16) + 2, 2**16 - 2), min_size=8, max_size=8), st.floats(1e-3, 1.0))
def test_layernorm_matches_oracle(row, s_out):
    p = _ln_p(8, len(row), s_out)
    out = np.empty((1, 8), np.int8)
    fused.layernorm(np.array([row], np.int32), *fast._ln(p, 8), out)
    assert out[0].tolist() == oracle.i_layernorm(row, p)


@FAST
@given(st.lists(st.integers(-(2**29), 2**29), min_size=8, max_size=8),
       st.lists(st.integers(-127, 127), min_size=8, max_size=8), st.floats(1e-4, 1e-1), st.floats(1e-2, 10.0))
def test_residual_layernorm_matches_oracle(acc, res, r_acc, r_res):
    d_acc = dyadic(torch.linspace(r_acc, 2 * r_acc, 8, dtype=torch.float64), 31, 16, "test")
    d_res = dyadic(r_res, 8, 16, "test")
    p = _ln_p(8, 1, 0.02)
    out = np.empty((1, 8), np.int8)
    fused.residual_layernorm(np.array([acc], np.int32), np.zeros(8, np.int64), *fast._channels(d_acc, 8),
                             np.array([res], np.int8), *fast._channels(d_res, 8), *fast._ln(p, 8), out)
    assert out[0].tolist() == oracle.i_layernorm(oracle.residual_add(acc, d_acc, res, d_res), p)


@FAST
@given(st.lists(st.integers(-(2**30), 2**30 - 1), min_size=4, max_size=4), st.floats(1e-6, 1e3))
def test_requant_rows_matches_oracle(xs, ratio):
    d = dyadic(torch.tensor([ratio, -ratio / 3, ratio * 7, ratio], dtype=torch.float64), 31, 8, "test")
    out = np.empty((1, 4), np.int8)
    fused.requant_rows(np.array([xs], np.int32), np.zeros(4, np.int64), *fast._channels(d, 4), out)
    assert out[0].tolist() == oracle.requant_row(xs, d)

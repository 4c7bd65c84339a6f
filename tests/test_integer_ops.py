"""Integer kernels vs the int64 oracle (bit for bit), overflow at the extremes of each range, op counts, and error bounds."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tstack.errors import TstackError
from tstack.integer import fast, ops, oracle
from tstack.integer import nonlinear as nl
from tstack.integer.costs import int_op_cost
from tstack.integer.errors_sweep import sweep
from tstack.integer.quant import dyadic, requant

FAST = settings(max_examples=40, deadline=None)
int16s = st.integers(-32767, 32767)


def _gelu_p(s_in: float = 10.0 / 32767) -> nl.GeluParams:
    return nl.gelu_params(torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64), s_in, 0.05, 8)


@FAST
@given(st.lists(st.integers(-(2**30), 2**30), min_size=3, max_size=3), st.floats(1e-6, 1e3))
def test_requant_matches_oracle(xs, ratio):
    d = dyadic(torch.tensor([ratio, -ratio / 3, ratio * 7], dtype=torch.float64), 31, 8, "test")
    assert requant(torch.tensor(xs, dtype=torch.int32), d).tolist() == oracle.requant_row(xs, d)


def test_requant_rounds_half_up_and_saturates():
    d = dyadic(0.5, 31, 8, "test")  # m / 2**e is exactly 1/2
    assert requant(torch.tensor([1, 3, -1, -3, 1000, -1000]), d).tolist() == [1, 2, 0, -1, 127, -127]


@FAST
@given(st.lists(st.integers(-(2**30), 2**30 - 1), min_size=3, max_size=3), st.floats(5e-5, 2e-3))
def test_gelu_matches_oracle(acc, s_in):
    p = _gelu_p(s_in)
    assert nl.i_gelu(torch.tensor([acc], dtype=torch.int32), p)[0].tolist() == oracle.i_gelu(acc, p)


@FAST
@given(st.lists(st.integers(-(2**20), 2**20), min_size=1, max_size=40), st.floats(1e-5, 1e-2), st.integers(2, 16),
       st.integers(4, 11))
def test_softmax_matches_oracle(row, scale, bits, exp_bits):
    p = nl.softmax_params(scale, exp_bits, bits)
    mask = [0] * len(row)
    mask[-1] = ops.MASK_ADD if len(row) > 1 else 0
    got = nl.i_softmax(torch.tensor([row], dtype=torch.int32), torch.tensor([mask], dtype=torch.int32), p)
    assert got[0].tolist() == oracle.i_softmax(row, mask, p)


@FAST
@given(st.lists(st.integers(-(2**16) + 2, 2**16 - 2), min_size=8, max_size=8), st.floats(1e-3, 1.0))
def test_layernorm_matches_oracle(row, s_out):
    g = torch.Generator().manual_seed(len(row))
    p = nl.layernorm_params(torch.randn(8, generator=g), torch.randn(8, generator=g), s_out, 8)
    assert nl.i_layernorm(torch.tensor([row], dtype=torch.int32), p)[0].tolist() == oracle.i_layernorm(row, p)


def test_isqrt_exact_on_all_small_and_extreme_inputs():
    small = torch.arange(1, 2**16, dtype=torch.int64)
    assert torch.equal(nl.isqrt(small), torch.tensor([math.isqrt(n) for n in small.tolist()]))
    # worst cases of Newton from 2**ceil(bits/2): just below and at squares and powers of two, up to the 2**48 bound
    edges = sorted({v for k in range(1, 49) for v in (2**k - 1, 2**k, 2**k + 1)} |
                   {v for r in (2**24 - 1, 2**23 + 1, 3037000, 46341) for v in (r * r - 1, r * r, r * r + 1)})
    edges = [n for n in edges if 1 <= n < 2**48]
    got = nl.isqrt(torch.tensor(edges, dtype=torch.int64)).tolist()
    assert got == [math.isqrt(n) for n in edges]
    assert got == [oracle.isqrt(n) for n in edges]


@FAST
@given(st.integers(1, 2**48 - 1))
def test_isqrt_property(n):
    r = int(nl.isqrt(torch.tensor([n]))[0])
    assert r * r <= n < (r + 1) * (r + 1)


def test_gelu_extremes_do_not_overflow():
    # the largest accumulators saturate the 16-bit input; the finest and coarsest input scales bound the constants
    for s_in in (1e-5, 8.0 / 32767, 1.0):
        p = _gelu_p(s_in)
        acc = torch.tensor([[2**31 - 1, -(2**31), 0], [1, -1, 2**20]], dtype=torch.int32)
        assert nl.i_gelu(acc, p).tolist() == [oracle.i_gelu(r, p) for r in acc.tolist()]
        assert -p.q_b <= 2**nl.ERF_ARG_BITS and abs(p.q_c) < 2**25  # the bounds docs/integer.md proves


def test_softmax_extremes_do_not_overflow():
    # the largest score magnitudes (d = 128: 128 * 127**2 < 2**21), one hot row, all-equal row, masked keys
    p = nl.softmax_params(1e-2, 11, 16)
    rows = [[2**21] + [-(2**21)] * 511, [0] * 512, [5] * 511 + [2**21]]
    mask = [0] * 500 + [ops.MASK_ADD] * 12
    got = nl.i_softmax(torch.tensor(rows, dtype=torch.int32), torch.tensor([mask], dtype=torch.int32), p)
    assert got.tolist() == [oracle.i_softmax(r, mask, p) for r in rows]
    assert int(got[0, 0]) == 2**16 - 1 and int(got[0, 1]) == 0  # one-hot: saturates at 2**bits - 1
    assert int(got[1, 500:].abs().sum()) == 0  # masked keys get probability 0


@pytest.mark.parametrize("layernorm", [nl.i_layernorm, fast.layernorm], ids=["pytorch", "fused"])
def test_layernorm_extremes_do_not_overflow(layernorm):
    h = 2**14  # the widest row allowed: the variance sum reaches its 2**48 bound
    x = torch.full((2, h), 2**16 - 1, dtype=torch.int32)
    x[0, ::2] = -(2**16) + 1
    x[1, 0] = -(2**16) + 1
    p = nl.layernorm_params(torch.ones(h), torch.zeros(h), 0.05, 8)
    assert layernorm(x, p).tolist() == [oracle.i_layernorm(r, p) for r in x.tolist()]


def test_int_gemm_extremes_and_bias_bound():
    k = 2048
    a = torch.full((17, k), -128, dtype=torch.int8)
    w = torch.full((8, k), -127, dtype=torch.int8)
    lin = ops.int_linear_weights(w, torch.full((8,), 2**30 - 16256 * k, dtype=torch.int64), "test")
    assert ops.linear(a, lin)[0, 0].item() == 128 * 127 * k + 2**30 - 16256 * k  # exact, no wrap-around
    with pytest.raises(TstackError, match="bias code"):
        ops.int_linear_weights(w, torch.full((8,), 2**30, dtype=torch.int64), "test")


@pytest.mark.parametrize("bits", [7, 8, 12])
def test_context_digit_split_is_exact(bits):
    g = torch.Generator().manual_seed(bits)
    p = torch.randint(0, 2**bits, (1, 2, 5, 9), generator=g)
    v = torch.randint(-127, 128, (1, 2, 9, 4), generator=g, dtype=torch.int8)
    want = torch.einsum("bhsl,bhld->bhsd", p.long(), v.long())
    assert torch.equal(ops.context(p, v, bits).long(), want)


def test_costs_match_the_oracle_op_by_op():
    def counted(n: int, k: int) -> list[oracle.Counted]:
        return [oracle.Counted((v * k) % 4001 - 2000) for v in range(n)]

    p_g, p_s = _gelu_p(), nl.softmax_params(1e-3, 10, 8)
    p_ln = nl.layernorm_params(torch.ones(16), torch.zeros(16), 0.05, 8)
    d = dyadic(torch.tensor([0.3, 0.7, 1.1], dtype=torch.float64), 31, 16, "test")
    cases = {"gelu": (lambda: oracle.i_gelu(counted(3, 37), p_g), 3),
             "softmax": (lambda: oracle.i_softmax(counted(11, 7), [0] * 11, p_s), 11),
             "exp": (lambda: [oracle.i_exp(oracle.Counted(-v), p_s) for v in range(0, 9000, 1000)], 9),
             "layernorm": (lambda: oracle.i_layernorm(counted(16, 99), p_ln), 16),
             "requant": (lambda: oracle.requant_row(counted(3, 5), d), 3),
             "residual": (lambda: oracle.residual_add(counted(3, 5), d, counted(3, 9), d), 3)}
    for name, (run, cols) in cases.items():
        with oracle.counting() as tally:
            run()
        want = int_op_cost(name).counts(1, cols)
        assert dict(tally) == {k: v for k, v in vars(want).items() if v}, name


def test_error_bounds():
    # I-BERT's polynomials bound the achievable error: erf poly gives |GELU error| <= 0.0182 on [-8, 8], the exp poly
    # 2.13e-3 on (-ln 2, 0]; integer rounding may add at most 5% (GELU) and 10% (exp) of that. Softmax at 8 bits is
    # bounded by half a code (2**-9) plus the exp error; LayerNorm by its 16-bit output step.
    errs = {e.op: e for e in sweep(["gelu", "exp", "softmax", "layernorm"], points=2001)}
    assert errs["gelu"].max_abs < 1.05 * errs["gelu"].poly_max < 0.0192
    assert errs["exp"].max_abs < 1.1 * errs["exp"].poly_max < 2.4e-3
    assert errs["softmax"].max_abs < 2**-9 + 2.4e-3
    assert errs["layernorm"].max_abs < 3e-3 and errs["layernorm"].rms < 1e-3
    with pytest.raises(TstackError, match="tanh"):
        sweep(["tanh"])

"""The measured fused kernels compute what the unfused ones do, and launch fewer kernels."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from tstack.kernels import fused as K  # noqa: E402
from tstack.profiler.fusion import kernel_count  # noqa: E402

SMALL = {"tokens": 64, "hidden": 32, "heads": 2, "seq": 16, "layers": 1, "vocab": 64}


@pytest.fixture(scope="module")
def cases():
    # compile_=False: the chains' fused function runs eagerly here (the same expression inductor compiles in
    # benchmarks/fusion_cpu.py, which checks the compiled values too); the other rules use PyTorch's fused kernels.
    return {c.rule: c for c in K.cases(**SMALL, compile_=False)}


def test_every_rule_has_a_case(cases):
    assert set(cases) == set(K.RULES)


@pytest.mark.parametrize("rule", K.RULES)
def test_fused_computes_the_same_values_as_unfused(cases, rule):
    c = cases[rule]
    assert K.max_difference(c.unfused(), c.fused()) <= c.tolerance


def test_adam_steps_agree_over_several_steps(cases):
    c = cases["adam"]
    for _ in range(3):
        a, b = c.unfused(), c.fused()
    assert K.max_difference(a, b) <= c.tolerance
    assert K.max_difference(a, [p + 1 for p in b]) > 0.5  # the comparison can fail


@pytest.mark.parametrize("rule,unfused,fused", [("layernorm", 9, 1), ("qkv", 11, 3), ("attention", 5, 1)])
def test_kernel_counts_from_the_profiler(cases, rule, unfused, fused):
    # layernorm: LAYERNORM_STEPS one kernel each vs native_layer_norm; qkv: 9 GEMMs + 2 gradient sums vs 3 GEMMs;
    # attention: bmm, scale, mask, softmax, bmm vs the CPU flash kernel
    c = cases[rule]
    assert (kernel_count(c.unfused), kernel_count(c.fused)) == (unfused, fused)


def test_adam_kernels_per_tensor(cases):
    c = cases["adam"]
    # torch.optim.Adam(foreach=False): step += 1, lerp_, mul_, addcmul_, sqrt, div, add_, addcdiv_ per tensor
    assert kernel_count(c.unfused) == 8 * c.info["tensors"]
    assert kernel_count(c.fused) <= 2

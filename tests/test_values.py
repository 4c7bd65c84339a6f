"""The value calibrator and flush-to-zero: what goes wrong without them, shown by counts (no timed assertions).

The slowdown itself is printed by benchmarks/denormals.py; here the tests count the subnormal and
inf values that uncalibrated inputs produce, and check that FTZ/DAZ reaches every OpenMP thread.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from tstack.profiler.opexec import prepare  # noqa: E402
from tstack.profiler.runtime import RuntimeConfig, controlled, describe  # noqa: E402
from tstack.profiler.values import Problems, Values, check_finite_normal  # noqa: E402
from tstack.workload import formulas as F  # noqa: E402
from tstack.workload.op import DTYPE_BYTES, Op  # noqa: E402

ONE = RuntimeConfig(threads=1, flush_denormal=False)
TWO_FTZ = RuntimeConfig(threads=2, flush_denormal=True)
TWO_NO_FTZ = RuntimeConfig(threads=2, flush_denormal=False)
N = 1 << 18  # large enough for PyTorch to split element-wise work over 2 threads (grain 32768)


def gemm(M: int, N: int, K: int, dtype: str) -> Op:
    c = F.gemm(M, N, K, 1, DTYPE_BYTES[dtype], DTYPE_BYTES[dtype])
    return Op("gemm", "ffn.fc1", c.dims, dtype, c.flops, c.bytes, ())


def pointwise(name: str, rows: int, cols: int, dtype: str = "fp32") -> Op:
    c = F.pointwise(name, rows, cols, DTYPE_BYTES[dtype])
    return Op(F.kernel(name).kind, name, c.dims, dtype, c.flops, c.bytes, ())


def outputs_problems(op: Op, cfg: RuntimeConfig, values: Values | None = None) -> Problems:
    p = prepare(op, cfg, values=values)
    with controlled(cfg):
        p.run()
    return sum((check_finite_normal(t) for t in p.outputs.values()), Problems())


@pytest.mark.parametrize("dtype,tiny", [(torch.float32, 1e-40), (torch.float16, 1e-6), (torch.bfloat16, 1e-40),
                                        (torch.float64, 1e-310)])
def test_check_finite_normal_counts_by_bits(dtype, tiny: float) -> None:
    t = torch.tensor([1.0, -2.0, 0.0, float("inf"), float("-inf"), float("nan"), tiny, -tiny], dtype=torch.float64).to(dtype)
    assert check_finite_normal(t) == Problems(8, 2, 1, 2)
    assert check_finite_normal(torch.ones(3, dtype=dtype)).ok
    assert check_finite_normal(torch.arange(5)) == Problems(5)  # integers have none


def test_check_sees_subnormals_even_with_daz_on() -> None:
    """With DAZ, arithmetic reads a subnormal as 0 (abs(x) > 0 is False); the bit test still counts it."""
    t = torch.full((N,), 1e-40)
    with controlled(TWO_FTZ):
        assert int((t.abs() > 0).sum()) == 0
        assert check_finite_normal(t).subnormal == N


def test_ftz_reaches_every_thread_and_is_restored() -> None:
    x = torch.full((N,), 1e-20)
    out = torch.empty_like(x)
    with controlled(TWO_NO_FTZ):
        torch.mul(x, x, out=out)  # 1e-40: subnormal in fp32
        assert check_finite_normal(out).subnormal == N
    with controlled(TWO_FTZ) as applied:
        torch.mul(x, x, out=out)
        # torch.set_flush_denormal alone sets only the calling thread: half of the tensor would stay subnormal.
        assert applied.ftz_all_threads and check_finite_normal(out).subnormal == 0
        assert "FTZ/DAZ on (all threads)" in describe(TWO_FTZ)
    with controlled(TWO_NO_FTZ):
        torch.mul(x, x, out=out)
        assert check_finite_normal(out).subnormal == N  # restored on every thread


def test_calibrated_inputs_keep_outputs_finite_and_normal() -> None:
    """Deep reductions, long softmax rows, LayerNorm, optimizer: no inf, NaN or subnormal (FTZ off)."""
    ops = [gemm(64, 32, 4096, "fp32"), gemm(64, 32, 4096, "bf16"), pointwise("softmax", 16, 4096),
           pointwise("softmax-bwd", 16, 4096), pointwise("layernorm", 64, 1024), pointwise("layernorm-bwd", 64, 1024),
           pointwise("rmsnorm-bwd", 64, 1024), pointwise("bias-gelu", 64, 1024), pointwise("gelu-bwd", 64, 1024),
           pointwise("silu-mul-bwd", 64, 1024), pointwise("mask", 64, 512), pointwise("dropout", 64, 512)]
    ops += [Op("elementwise", n, (("params", N),), "fp32", 0, 0, ()) for n in ("lamb-stage1", "adam", "sgd", "lamb-stage2")]
    for op in ops:
        assert outputs_problems(op, ONE).ok, op.name


def test_fp16_gemm_stays_finite_at_any_depth() -> None:
    """A ~ N(0, 1/K): a K = 16384 fp16 GEMM stays O(1), far below fp16's 65504."""
    p = prepare(gemm(32, 32, 16384, "fp16"), ONE)
    p.run()
    assert check_finite_normal(p.output()).finite
    assert float(p.output().abs().max()) < 10


def test_uncalibrated_tiny_values_produce_subnormals_that_only_ftz_removes() -> None:
    """Weights at 1e-20 (normal numbers) give GEMM outputs near 1e-40: every one subnormal, hence slow on CPU.

    FTZ/DAZ flushes them to zero; the calibrated draw never produces them.
    """
    op = gemm(128, 128, 64, "fp32")
    tiny = Values(scale=1e-20)
    p = prepare(op, ONE, values=tiny)
    assert check_finite_normal(p.inputs["A"]).ok and check_finite_normal(p.inputs["B"]).ok  # inputs are normal...
    without = outputs_problems(op, TWO_NO_FTZ, tiny)
    assert without.finite and without.subnormal > 0.99 * 128 * 128  # ...outputs are not
    assert outputs_problems(op, TWO_FTZ, tiny).subnormal == 0
    assert outputs_problems(op, TWO_NO_FTZ).ok

    # Element-wise chains do the same: scaling tiny scores makes subnormals.
    sm = pointwise("scale", 512, 512)
    assert outputs_problems(sm, TWO_NO_FTZ, Values(scale=1e-37)).subnormal > 0.5 * 512 * 512  # |x| < 9.4e-38
    assert outputs_problems(sm, TWO_NO_FTZ).ok


def test_uncalibrated_large_values_overflow_fp16() -> None:
    """fp16 tops out at 65504: operands at 1000× the calibrated scale overflow a 1024-deep GEMM to inf."""
    op = gemm(64, 64, 1024, "fp16")
    assert outputs_problems(op, ONE, Values(scale=1e3)).inf > 0
    assert outputs_problems(op, ONE).finite


def test_fp16_draws_have_no_subnormal_inputs() -> None:
    """N(0, 1) in fp16 would hold ~5 subnormals per 10⁵ values; the calibrator rounds those to 0."""
    p = prepare(pointwise("residual", 512, 1024, "fp16"), ONE)
    assert all(check_finite_normal(t).ok for t in p.inputs.values())
    p = prepare(Op("copy", "master-to-model", (("params", N),), "fp32", 0, 0, ()), ONE)
    p.run()
    assert check_finite_normal(p.output()).ok  # fp32 masters whose fp16 copy would be subnormal are drawn as 0


def test_pooled_draws_keep_the_calibrated_distributions_and_outputs_normal() -> None:
    """The calibration's pooled draws: same scales as Draw, no subnormal input or output (FTZ off), fresh slices."""
    from tstack.profiler.values import Pool, PooledDraw

    pool = Pool(1 << 20, seed=1)
    draw = PooledDraw(0, "cpu", pool=pool)
    a = draw.gemm_a((256, 1024), torch.float32, 1024)
    assert abs(float(a.std()) - 1 / 32) < 2e-3 and check_finite_normal(a).ok
    b, c = draw.activation((512, 512), torch.float32), draw.activation((512, 512), torch.float32)
    assert abs(float(b.std()) - 1) < 0.02 and not torch.equal(b, c)  # each tensor its own slice
    h = draw.normal((1 << 16,), torch.float16)
    assert check_finite_normal(h).ok  # small values zeroed for the narrow format, as Draw does
    ops = [gemm(64, 32, 4096, "fp32"), pointwise("softmax-bwd", 16, 4096), pointwise("layernorm", 64, 1024),
           pointwise("layernorm-bwd", 64, 1024), pointwise("dropout", 64, 512)]
    ops += [Op("elementwise", n, (("params", N),), "fp32", 0, 0, ()) for n in ("lamb-stage1", "adam")]
    ops.append(Op("copy", "grad-to-master", (("params", N),), "fp16", N, 6 * N, ()))
    for op in ops:
        p = prepare(op, ONE, draw=PooledDraw(0, "cpu", pool=pool))
        with controlled(ONE):
            p.run()
        found = sum((check_finite_normal(t) for t in (*p.inputs.values(), *p.outputs.values())
                     if t.dtype != torch.float16), Problems())
        assert found.ok, op.name


def test_pooled_draws_fall_back_beyond_the_pool_and_for_tiny_scales() -> None:
    from tstack.profiler.values import Pool, PooledDraw

    draw = PooledDraw(0, "cpu", pool=Pool(1024))
    big = draw.activation((64, 64), torch.float32)  # 4096 values > 1024: drawn by Draw
    assert big.shape == (64, 64) and abs(float(big.std()) - 1) < 0.1
    tiny = PooledDraw(0, "cpu", Values(scale=1e-30), pool=Pool(1 << 12)).activation((32, 32), torch.float32)
    assert float(tiny.abs().max()) < 1e-28  # the uncalibrated scale is kept

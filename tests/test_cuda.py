"""The CUDA path: ops prepared on the GPU, event timing, a measured Breakdown. Skipped without a CUDA device."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (CPU build of PyTorch or no GPU)")

from tstack import ModelSpec, RunSpec, TstackError, analyze  # noqa: E402
from tstack.profiler import opexec  # noqa: E402
from tstack.profiler.measure import measure  # noqa: E402
from tstack.profiler.runtime import RuntimeConfig, controlled, describe  # noqa: E402
from tstack.profiler.timing import TimingPlan, time_callable  # noqa: E402
from tstack.profiler.values import check_finite_normal  # noqa: E402
from tstack.workload import formulas as F  # noqa: E402
from tstack.workload.op import DTYPE_BYTES, Op  # noqa: E402

GPU = RuntimeConfig(device="cuda", threads=1)
TOL = {"fp32": 2e-4, "fp16": 1e-2, "bf16": 4e-2, "int8": 0.0}
TOL_BY_DTYPE = {torch.float32: 2e-4, torch.float16: 1e-2, torch.bfloat16: 4e-2, torch.int32: 0.0}
OPTIMIZER_NAMES = ("lamb-stage1", "lamb-stage2", "lamb-norms", "lamb-global-norm", "adam", "sgd")


def _compare(op: Op) -> opexec.PreparedOp:
    with controlled(GPU):
        p = opexec.prepare(op, GPU)
        assert all(t.device.type == "cuda" for t in (*p.inputs.values(), *p.outputs.values()))
        before = {k: v.clone() for k, v in p.inputs.items()}
        p.run()
        torch.cuda.synchronize()
    produced = {k: v for k, v in p.outputs.items() if k not in before}
    ref = opexec.reference(op, {**produced, **before})
    for key, want in ref.items():
        got = p.outputs[key].to("cpu", torch.float64)
        tol = max(TOL_BY_DTYPE[p.outputs[key].dtype], TOL[op.dtype])
        atol = tol * max(float(want.abs().max()), 1e-3)
        torch.testing.assert_close(got, want, rtol=tol, atol=atol, msg=lambda m, k=key: f"{op.name} {k}: {m}")
    return p


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("name", sorted(F.KERNELS))
def test_pointwise_kernels_on_cuda_match_reference(name: str, dtype: str) -> None:
    c = F.pointwise(name, 24, 40, DTYPE_BYTES[dtype])
    _compare(Op(F.kernel(name).kind, name, c.dims, dtype, c.flops, c.bytes, ()))


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16", "int8"])
@pytest.mark.parametrize("kind", ["gemm", "bgemm"])
def test_gemms_on_cuda_match_reference(kind: str, dtype: str) -> None:
    c = F.gemm(32, 24, 40, 3 if kind == "bgemm" else 1, 2, 2)
    _compare(Op(kind, "x", c.dims, dtype, c.flops, c.bytes, ()))


def test_gathers_optimizer_and_copies_on_cuda_match_reference() -> None:
    _compare(Op("gather", "word_embeddings", (("rows", 20), ("cols", 16)), "fp16", 0, 1, ()))
    _compare(Op("gather", "word_embeddings", (("rows", 20), ("cols", 16), ("table", 50)), "fp32", 320, 1, ()))
    for name in OPTIMIZER_NAMES:
        _compare(Op("elementwise", name, (("params", 10_000),), "fp32", 0, 1, ()))
    for name in ("grad-to-master", "master-to-model"):
        _compare(Op("copy", name, (("params", 10_000),), "fp32", 0, 1, ()))


def test_int8_gemm_shapes_cuda_cannot_run_are_clean_errors() -> None:
    c = F.gemm(8, 8, 12, 1, 1, 1)  # M ≤ 16, K not a multiple of 8
    with pytest.raises(TstackError, match="_int_mm"):
        opexec.prepare(Op("gemm", "x", c.dims, "int8", c.flops, c.bytes, ()), GPU)


def test_event_timing_on_cuda() -> None:
    c = F.gemm(512, 512, 512, 1, 2, 2)
    p = opexec.prepare(Op("gemm", "x", c.dims, "fp16", c.flops, c.bytes, ()), GPU)
    with controlled(GPU):
        t = time_callable(p.run, GPU, warmup=3, repeats=5)
    assert t.repeats == 5 and 0 < t.p10 <= t.median <= t.p90
    assert check_finite_normal(p.output()).finite
    assert "cuda" in describe(GPU) and GPU.short_name.startswith("cuda-")


@pytest.mark.parametrize("precision", ["fp32", "fp16-mixed"])
def test_measured_breakdown_on_cuda(precision: str) -> None:
    tiny = ModelSpec(name="tiny", arch="encoder", layers=2, hidden=64, heads=4, ffn=128, vocab=100, type_vocab=2,
                     max_positions=64)
    run = RunSpec(mode="train", batch=2, seq=16, precision=precision)
    b = measure(tiny, run, GPU, TimingPlan(warmup=1, repeats=3))
    assert b.ops == analyze(tiny, run, "h100").ops
    assert b.device.startswith("cuda") and all(c.seconds > 0 for c in b.costs)

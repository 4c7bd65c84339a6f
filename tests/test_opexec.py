"""The PyTorch implementation of every Op kind and registered kernel against a plain float64 reference.

Shapes are small and drawn by Hypothesis; tolerances per dtype. Also: every kernel the workload
builder can emit has an implementation (a newly registered kernel without one fails here), unknown
kernels and dtypes raise TstackError, run() keeps shapes and allocates no buffer.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tstack import ModelSpec, RunSpec, TstackError, build  # noqa: E402
from tstack.profiler import opexec  # noqa: E402
from tstack.profiler.measure import signature  # noqa: E402
from tstack.profiler.opexec import prepare, reference  # noqa: E402
from tstack.profiler.runtime import RuntimeConfig  # noqa: E402
from tstack.workload import formulas as F  # noqa: E402
from tstack.workload.op import DTYPE_BYTES, Op  # noqa: E402

CFG = RuntimeConfig(threads=1)
FLOATS = ("fp32", "fp16", "bf16")
TOL = {torch.float32: 2e-4, torch.float16: 1e-2, torch.bfloat16: 4e-2, torch.int32: 0.0, torch.float64: 1e-9}
OP_TOL = {"fp32": 2e-4, "fp16": 1e-2, "bf16": 4e-2, "int8": 0.0}
OPTIMIZER_NAMES = sorted({stage for stages in F.OPTIMIZER_STAGES.values() for stage, _ in stages}
                         | {"lamb-norms", "lamb-global-norm"})
COPY_NAMES = ("grad-to-master", "master-to-model")
SMALL = settings(max_examples=6, deadline=None)


def pointwise_op(name: str, rows: int, cols: int, dtype: str) -> Op:
    c = F.pointwise(name, rows, cols, DTYPE_BYTES[dtype])
    return Op(F.kernel(name).kind, name, c.dims, dtype, c.flops, c.bytes, (("pass", "fwd"),))


def gemm_op(kind: str, M: int, N: int, K: int, batch: int, dtype: str) -> Op:
    c = F.gemm(M, N, K, batch, DTYPE_BYTES[dtype], DTYPE_BYTES[dtype])
    return Op(kind, "attn.score" if kind == "bgemm" else "ffn.fc1", c.dims, dtype, c.flops, c.bytes, ())


def gather_op(rows: int, cols: int, table: int, dtype: str, backward: bool) -> Op:
    """An embedding lookup (0 FLOPs) or its backward (one add per gathered element) from a table of ``table`` rows."""
    dims = (("rows", rows), ("cols", cols)) + ((("table", table),) if table else ())
    return Op("gather", "word_embeddings", dims, dtype, rows * cols if backward else 0, 1, ())


def param_op(kind: str, name: str, params: int) -> Op:
    return Op(kind, name, (("params", params),), "fp32", params, 4 * params, ())


def run_and_compare(op: Op, seed: int = 0) -> opexec.PreparedOp:
    """prepare → run once → every output the reference gives equals it (per-dtype tolerance)."""
    p = prepare(op, CFG, seed)
    before = {k: v.clone() for k, v in p.inputs.items()}
    shapes = {k: (v.shape, v.dtype) for k, v in {**p.inputs, **p.outputs}.items()}
    p.run()
    assert {k: (v.shape, v.dtype) for k, v in {**p.inputs, **p.outputs}.items()} == shapes
    assert p.output() is p.outputs[p.primary]
    produced = {k: v for k, v in p.outputs.items() if k not in before}  # e.g. the dropout mask
    ref = reference(op, {**produced, **before})
    assert p.primary in ref and set(ref) <= set(p.outputs)
    for key, want in ref.items():
        got = p.outputs[key].to(torch.float64)
        tol = max(TOL[p.outputs[key].dtype], OP_TOL[op.dtype])
        atol = tol * max(float(want.abs().max()) if want.numel() else 0.0, 1e-3)
        torch.testing.assert_close(got, want, rtol=tol, atol=atol, msg=lambda m, k=key: f"{op.name} output {k}: {m}")
    return p


@pytest.mark.parametrize("name", sorted(F.KERNELS))
@SMALL
# Hidden widths ≥ 8: below that LayerNorm's backward is mostly cancellation (exactly 0 at width 2).
@given(rows=st.integers(1, 33), cols=st.integers(8, 40), dtype=st.sampled_from(FLOATS), seed=st.integers(0, 2**16))
def test_pointwise_kernels_match_reference(name: str, rows: int, cols: int, dtype: str, seed: int) -> None:
    run_and_compare(pointwise_op(name, rows, cols, dtype), seed)


@pytest.mark.parametrize("kind", ["gemm", "bgemm"])
@SMALL
@given(M=st.integers(1, 40), N=st.integers(1, 40), K=st.integers(1, 48), batch=st.integers(1, 3),
       dtype=st.sampled_from(FLOATS + ("int8",)), seed=st.integers(0, 2**16))
def test_gemms_match_reference(kind: str, M: int, N: int, K: int, batch: int, dtype: str, seed: int) -> None:
    p = run_and_compare(gemm_op(kind, M, N, K, batch if kind == "bgemm" else 1, dtype), seed)
    expected = (batch, M, N) if kind == "bgemm" else (M, N)
    assert tuple(p.output().shape) == expected
    assert p.output().dtype == (torch.int32 if dtype == "int8" else getattr(torch, opexec.DTYPES[dtype]))


@SMALL
@given(rows=st.integers(1, 30), cols=st.integers(1, 20), table=st.integers(0, 50), dtype=st.sampled_from(FLOATS),
       backward=st.booleans(), seed=st.integers(0, 2**16))
def test_embedding_lookup_and_backward_match_reference(rows: int, cols: int, table: int, dtype: str, backward: bool,
                                                       seed: int) -> None:
    p = run_and_compare(gather_op(rows, cols, table, dtype, backward), seed)
    assert tuple(p.output().shape) == ((table or rows, cols) if backward else (rows, cols))


def test_builder_gathers_resolve_to_lookup_and_backward() -> None:
    ops = [o for o in build(WORKLOADS[0][0], RunSpec(mode="train", batch=1, seq=8)) if o.kind == "gather"]
    keys = {(o.label("pass"), opexec.implementation_key(o)) for o in ops}
    assert keys == {("fwd", "gather"), ("bwd-weight", "gather-bwd")}


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
@SMALL
@given(params=st.integers(1, 5000), seed=st.integers(0, 2**16))
def test_optimizer_stages_match_reference(name: str, params: int, seed: int) -> None:
    kind = "reduction" if "norm" in name else "elementwise"
    run_and_compare(param_op(kind, name, params), seed)


@pytest.mark.parametrize("name", ["adam", "sgd", "lamb-stage2"])
def test_optimizer_updates_are_the_reference_updates(name: str) -> None:
    """The weight *change* (1e-4 of the weight) matches too, not only the weight to fp32 precision."""
    op = param_op("elementwise", name, 4096)
    p = prepare(op, CFG)
    w0 = p.inputs["w"].clone().double()
    before = {k: v.clone() for k, v in p.inputs.items()}
    p.run()
    want = reference(op, before)["w"] - w0
    got = p.outputs["w"].double() - w0
    assert float(want.abs().max()) > 0
    ulp = 2 * torch.finfo(torch.float32).eps * float(w0.abs().max())  # the rounding of w itself
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3 * float(want.abs().max()) + ulp)


@pytest.mark.parametrize("name", COPY_NAMES)
@SMALL
@given(params=st.integers(1, 5000), seed=st.integers(0, 2**16))
def test_mixed_precision_copies_match_reference(name: str, params: int, seed: int) -> None:
    p = run_and_compare(param_op("copy", name, params), seed)
    assert p.output().dtype == (torch.float32 if name == "grad-to-master" else torch.float16)


def test_dropout_keeps_about_one_minus_p() -> None:
    p = prepare(pointwise_op("dropout", 256, 256, "fp32"), CFG)
    p.run()
    kept = float(p.outputs["mask"].float().mean())
    assert abs(kept - (1 - opexec.DROPOUT_P)) < 0.01


WORKLOADS = [
    (ModelSpec(name="enc", arch="encoder", layers=1, hidden=32, heads=2, ffn=64, vocab=50, type_vocab=2, max_positions=32),
     ("lamb", "adam", "sgd")),
    (ModelSpec(name="llama", arch="decoder", layers=1, hidden=32, heads=4, kv_heads=2, ffn=48, vocab=50, activation="silu",
               gated_ffn=True, norm="rmsnorm", norm_position="pre", position="rotary", bias=False, head="lm",
               max_positions=32), ("adam",)),
    (ModelSpec(name="encdec", arch="enc-dec", layers=1, decoder_layers=1, hidden=32, heads=2, ffn=64, vocab=50,
               activation="relu", position="sinusoidal", head="lm", max_positions=32), ("sgd",)),
    (ModelSpec(name="mem", arch="memnet", layers=1, hops=2, hidden=16, heads=1, ffn=16, vocab=20, head="memnet-answer",
               position="none"), ("lamb",)),
]


def test_every_kernel_and_stage_the_workload_can_emit_has_an_implementation() -> None:
    names = set(F.KERNELS) | set(OPTIMIZER_NAMES) | set(COPY_NAMES) | {"gemm", "bgemm", "gather", "gather-bwd"}
    missing = sorted(n for n in names if n not in opexec.BUILDERS or n not in opexec.REFERENCES)
    assert not missing, f"kernels without a PyTorch implementation or reference: {missing}"
    # ...and every Op the builder emits resolves to one (a kernel registered elsewhere fails here too).
    for model, optimizers in WORKLOADS:
        for opt in optimizers:
            for run in (RunSpec(mode="train", batch=1, seq=8, precision="fp16-mixed", optimizer=opt),
                        RunSpec(mode="train", batch=1, seq=8, optimizer=opt, attention="sdpa"),
                        RunSpec(mode="infer", batch=1, seq=8, precision="int8")):
                for op in build(model, run):
                    assert opexec.has_implementation(opexec.implementation_key(op)), op


@pytest.mark.parametrize("mode", ["infer", "train"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16-mixed"])
def test_fused_attention_is_sdpa_and_matches_reference(mode: str, dtype: str) -> None:
    """The fused attention op (``--attention sdpa``) runs F.scaled_dot_product_attention at its dims, forward and
    backward, equal to softmax(q·kᵀ/√d)·v and its gradients in float64; 4 query heads over 2 KV heads stacked."""
    model = ModelSpec(name="gqa", arch="decoder", layers=1, hidden=32, heads=4, kv_heads=2, ffn=64, vocab=50,
                      activation="silu", gated_ffn=True, norm="rmsnorm", norm_position="pre", position="rotary",
                      bias=False, head="lm", max_positions=64)
    fused = [op for op in build(model, RunSpec(mode=mode, batch=2, seq=6, precision=dtype, attention="sdpa"))
             if op.label("fusion") == "flash-attention"]
    assert len(fused) == (2 if mode == "train" else 1)
    # forward and backward have the same dims and dtype but not the same kernel: measured once each, not shared
    assert len({signature(op) for op in fused}) == len(fused)
    for op in fused:
        assert op.gemm_shape == (6, 2 * 6, 8, 2 * 2)
        p = run_and_compare(op)
        assert p.output().shape == ((4, 12, 8))


def test_unknown_kernel_raises_naming_it() -> None:
    op = Op("elementwise", "no-such-kernel", (("rows", 2), ("cols", 2)), "fp32", 0, 0, ())
    with pytest.raises(TstackError, match="no-such-kernel"):
        prepare(op, CFG)
    with pytest.raises(TstackError, match="no-such-kernel"):
        reference(op, {})


def test_duplicate_implementation_raises() -> None:
    """Like formulas.register: a second implementation of a name raises and leaves the registry as it was."""
    from tstack.profiler.opexec.core import implements

    before = dict(opexec.BUILDERS)
    with pytest.raises(ValueError, match="'softmax' is registered twice"):
        implements("softmax")(lambda ctx: None)
    with pytest.raises(ValueError, match="'no-such-kernel' is registered twice"):
        implements("no-such-kernel", "no-such-kernel")(lambda ctx: None)
    assert opexec.BUILDERS == before


def test_unsupported_dtypes_raise() -> None:
    with pytest.raises(TstackError, match="fp8"):
        prepare(Op("gemm", "x", (("M", 2), ("N", 2), ("K", 2), ("batch", 1)), "fp8", 0, 0, ()), CFG)
    with pytest.raises(TstackError, match="int8"):
        prepare(pointwise_op("softmax", 2, 2, "int8"), CFG)


def test_run_allocates_no_buffers() -> None:
    """The timed call does no buffer allocation: at most PyTorch's 8-byte wrappers of Python scalars."""
    from torch.profiler import ProfilerActivity, profile

    ops = [pointwise_op(n, 64, 96, "fp32") for n in sorted(F.KERNELS)]
    ops += [gemm_op("gemm", 32, 16, 24, 1, "fp32"), gemm_op("bgemm", 32, 16, 24, 2, "int8"), gather_op(16, 8, 0, "fp32", False),
            gather_op(16, 8, 40, "fp32", True)]
    ops += [param_op("elementwise", n, 5000) for n in OPTIMIZER_NAMES] + [param_op("copy", n, 5000) for n in COPY_NAMES]
    big = []
    for op in ops:
        p = prepare(op, CFG)
        p.run()
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            p.run()
        sizes = [e.cpu_memory_usage for e in prof.events() if e.name == "[memory]" and e.cpu_memory_usage > 64]
        if sizes:
            big.append((op.name, sizes))
    assert not big

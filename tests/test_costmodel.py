"""Cost arithmetic, the roofline model and the Breakdown built from it."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tstack import Cost, RunSpec, SpecError, analyze, build, load_device, load_model, roofline
from tstack.breakdown import GROUP_KEYS, KEY_ALIASES
from tstack.costmodel.roofline import gemm_efficiency, memory_efficiency
from tstack.hardware.device import device_presets
from tstack.workload import formulas as F
from tstack.workload.labels import FC_GEMM, GELU
from tstack.workload.op import LABEL_KEYS, Op, OpKind

FIELDS = ("seconds", "flops", "bytes", "compute_s", "memory_s", "overhead_s", "ideal_s", "kernels")
LABELS = tuple(zip(LABEL_KEYS, ("transformer", "L0", "fc", FC_GEMM, "linear trans-1", "fwd")))
DEVICES = {name: load_device(name) for name in device_presets()}


def gemm_op(M: int, N: int, K: int, batch: int = 1, dtype: str = "fp16", count: int = 1) -> Op:
    width = {"fp32": 4, "tf32": 4, "fp16": 2, "bf16": 2, "int8": 1}[dtype]
    c = F.gemm(M, N, K, batch, width, width)
    return Op(OpKind.GEMM if batch == 1 else OpKind.BGEMM, "g", c.dims, dtype, c.flops, c.bytes, LABELS, count)


def pointwise_op(name: str, rows: int, cols: int, dtype: str = "fp16", count: int = 1) -> Op:
    width = {"fp32": 4, "fp16": 2, "bf16": 2}[dtype]
    c = F.pointwise(name, rows, cols, width)
    return Op(F.kernel(name).kind, name, c.dims, dtype, c.flops, c.bytes, LABELS, count)


# ---------------------------------------------------------------------------------------------
# Cost arithmetic
# ---------------------------------------------------------------------------------------------
finite = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)
costs = st.builds(Cost, finite, finite, finite, finite, finite, finite, finite, st.integers(0, 10_000))


@given(st.lists(costs, max_size=8))
def test_cost_sum_is_fieldwise_sum(cs):
    expected = dict.fromkeys(FIELDS, 0)
    for c in cs:  # sequential left-to-right addition, the order Cost.__add__ uses
        for f in FIELDS:
            expected[f] = expected[f] + getattr(c, f)
    # sum() without a start value works through __radd__ (an empty list sums to the int 0)
    for got in (sum(cs, Cost()), sum(cs) if cs else Cost()):
        assert isinstance(got, Cost)
        assert {f: getattr(got, f) for f in FIELDS} == expected


@given(costs, costs)
def test_cost_add_commutes_fieldwise(a, b):
    assert a + b == b + a  # float addition of two numbers is commutative


@given(costs, st.integers(0, 1000))
def test_cost_times_n(c, n):
    for got in (c * n, n * c):
        for f in FIELDS:
            assert getattr(got, f) == getattr(c, f) * n
    assert (c * n).kernels == c.kernels * n


def test_cost_add_rejects_other_types():
    with pytest.raises(TypeError):
        Cost() + 1.0
    with pytest.raises(TypeError):
        1 + Cost()  # only 0 (sum's start value) is accepted on the left


def test_cost_derived_properties():
    c = Cost(seconds=4.0, flops=100.0, bytes=50.0, compute_s=3.0, memory_s=1.0, overhead_s=0.5, ideal_s=2.0, kernels=1)
    assert c.utilization == 0.5  # ideal_s / seconds = 2/4
    assert c.intensity == 2.0  # 100 FLOP / 50 B
    assert c.bound == "compute"  # compute_s 3.0 is the largest part
    assert Cost(seconds=1.0, memory_s=0.9, overhead_s=0.1).bound == "memory"
    assert Cost().bound == "-" and Cost().utilization == 0.0


# ---------------------------------------------------------------------------------------------
# Roofline
# ---------------------------------------------------------------------------------------------
@st.composite
def device_ops(draw):
    dev = DEVICES[draw(st.sampled_from(sorted(DEVICES)))]
    count = draw(st.integers(1, 50))
    if draw(st.booleans()):
        dtypes = sorted(set(dev.peak_flops.get("matrix", {})) | set(dev.peak_flops["vector"]))
        dims = [draw(st.integers(1, 20_000)) for _ in range(3)]
        op = gemm_op(*dims, batch=draw(st.integers(1, 64)), dtype=draw(st.sampled_from(dtypes)), count=count)
        peak = dev.peak("matrix", op.dtype)
    else:
        dtypes = sorted(set(dev.peak_flops["vector"]) & {"fp32", "fp16", "bf16"})
        name = draw(st.sampled_from(sorted(F.KERNELS)))
        op = pointwise_op(name, draw(st.integers(1, 100_000)), draw(st.integers(1, 8192)),
                          draw(st.sampled_from(dtypes)), count)
        peak = dev.peak("vector", op.dtype)
    return dev, op, peak


@settings(max_examples=300)
@given(device_ops())
def test_roofline_never_faster_than_the_roofline(case):
    dev, op, peak = case
    c = roofline(op, dev)
    n = op.count
    floor = (max(op.flops / peak, op.bytes / dev.memory_bandwidth) + dev.launch_overhead) * n
    assert c.seconds >= floor * (1 - 1e-12)
    assert c.flops == op.flops * n and c.bytes == op.bytes * n and c.kernels == n
    assert c.overhead_s == pytest.approx(dev.launch_overhead * n)
    assert c.ideal_s == pytest.approx(op.flops * n / peak)  # time at 100% of peak
    if op.flops:
        assert 0 < c.utilization <= 1
    # count instances cost count × one instance
    one = roofline(Op(op.kind, op.name, op.dims, op.dtype, op.flops, op.bytes, op.labels, 1), dev)
    assert c.seconds == pytest.approx(one.seconds * n, rel=1e-12)


@settings(max_examples=200)
@given(st.sampled_from(sorted(DEVICES)), st.integers(1, 8192), st.integers(1, 8192), st.integers(1, 8192),
       st.integers(1, 8192), st.integers(1, 16), st.sampled_from(["fp32", "fp16"]))
def test_gemm_seconds_monotone_in_m(device, m1, m2, N, K, batch, dtype):
    dev = DEVICES[device]
    assume(m1 != m2)
    assume(dtype in dev.peak_flops["vector"] or dtype in dev.peak_flops.get("matrix", {}))
    small, large = sorted((m1, m2))
    t_small = roofline(gemm_op(small, N, K, batch, dtype), dev).seconds
    t_large = roofline(gemm_op(large, N, K, batch, dtype), dev).seconds
    # the model is monotone; allow one rounding step where both sizes take mathematically equal time
    # (e.g. N=K=1: compute time M·c / (M·c') is the same for every M within one tile)
    assert t_large >= t_small * (1 - 1e-12)


def test_bound_memory_compute_overhead_on_a100():
    a100 = DEVICES["a100"]
    ew = roofline(pointwise_op("residual", 4096, 1024, "fp16"), a100)  # 1 FLOP per 6 bytes
    assert ew.bound == "memory"
    assert ew.memory_s > 0 and ew.compute_s == 0.0  # the compute time hides under memory time
    big = roofline(gemm_op(8192, 8192, 8192, dtype="fp16"), a100)  # intensity 8192/3 ≈ 2731 FLOP/B
    assert big.bound == "compute"
    assert 0 < big.utilization <= 1
    # 64² = 4096 tiles over 108 SMs: 38 waves, 4096/4104 used; K term 8192/8256; matrix_max 0.8
    eff = 0.8 * (4096 / 4104) * (8192 / 8256)
    ideal = 2 * 8192**3 / 312e12  # time at peak
    # utilization = ideal / (ideal/eff + 5 µs launch overhead) ≈ eff (the overhead is 0.1% of 4.5 ms)
    assert big.utilization == pytest.approx(ideal / (ideal / eff + 5e-6), rel=1e-12)
    tiny = roofline(pointwise_op("scale", 1, 1, "fp16"), a100)  # 1 element: 5 µs launch dominates
    assert tiny.bound == "overhead"


def test_gemm_efficiency_worked_example():
    """efficiency = matrix_max × reuse × tile util × wave util × k/(k + k_half), on a100:
    128×128 tiles, 108 SMs, k_half 64, matrix_max 0.8, split-K slices at least 256 deep."""
    a100 = DEVICES["a100"]
    # M=200, N=300, K=64: both dims ≥ 128, so full 128×128 tiles (reuse 1);
    # ceil(200/128)=2 × ceil(300/128)=3 tiles padded to 256×384 → tile util 60000/98304;
    # 6 tiles < 108 SMs but K=64 < 256 allows no split-K → 1 wave, wave util 6/108; K term 64/(64+64) = 0.5
    expected = 0.8 * 1 * (60_000 / 98_304) * (6 / 108) * 0.5
    assert expected == pytest.approx(0.0135634, rel=1e-5)
    assert gemm_efficiency(200, 300, 64, 1, a100) == pytest.approx(expected, rel=1e-12)
    # M=2048, N=4096, K=1024: 16×32 = 512 full tiles ≥ 108 (no split) → ceil(512/108) = 5 waves, util 512/540;
    # K term 1024/1088
    assert gemm_efficiency(2048, 4096, 1024, 1, a100) == pytest.approx(0.8 * (512 / 540) * (1024 / 1088), rel=1e-12)
    # batched: M=N=128 (one tile each) × batch 216 → exactly 2 full waves; K=64 → 0.5
    assert gemm_efficiency(128, 128, 64, 216, a100) == pytest.approx(0.8 * 1 * 1 * 0.5, rel=1e-12)
    # small and deep: M=64, N=32, K=4096 → a 64×32 tile (next powers of two ≥ 16), reuse √(64·32/128²) = √(1/8),
    # tile util 1; 1 tile < 108 SMs → split-K into min(108 // 1, 4096 // 256) = 16 slices of k = 256;
    # 16 slices in 1 wave → wave util 16/108; K term 256/(256+64) = 0.8
    small = 0.8 * math.sqrt(1 / 8) * 1 * (16 / 108) * 0.8
    assert gemm_efficiency(64, 32, 4096, 1, a100) == pytest.approx(small, rel=1e-12)
    # and the roofline uses it: compute time = FLOPs / (peak × efficiency)
    op = gemm_op(200, 300, 64, dtype="fp16")
    assert roofline(op, a100).compute_s == pytest.approx(op.flops / (312e12 * expected), rel=1e-12)


def test_memory_efficiency_formula():
    a100 = DEVICES["a100"]  # memory_max 0.85, bytes_half 1e6
    assert memory_efficiency(1e6, a100) == pytest.approx(0.85 * 0.5)  # half of max at bytes_half
    assert memory_efficiency(1e12, a100) == pytest.approx(0.85, rel=1e-5)


def test_device_without_bf16_raises_spec_error():
    v100 = DEVICES["v100"]
    with pytest.raises(SpecError, match="bf16"):
        roofline(gemm_op(256, 256, 256, dtype="bf16"), v100)
    with pytest.raises(SpecError, match="bf16"):
        roofline(pointwise_op("softmax", 256, 256, "bf16"), v100)
    with pytest.raises(SpecError, match="bf16"):
        analyze("bert-base", device="v100", precision="bf16-mixed", mode="train", batch=2, seq=32)
    # fp16 is fine on the same device
    assert analyze("bert-base", device="v100", precision="fp16-mixed", batch=2, seq=32).total.seconds > 0


# ---------------------------------------------------------------------------------------------
# analyze() and Breakdown
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bert_train():
    return analyze("bert-base", mode="train", batch=2, seq=32, precision="fp16-mixed", checkpoint="sqrt", device="a100")


def test_analyze_total_is_sum_of_op_costs(bert_train):
    bd = bert_train
    spec, dev = load_model("bert-base"), load_device("a100")
    ops = build(spec, bd.run)
    assert bd.ops == ops
    expected = Cost()
    for op in ops:
        expected = expected + roofline(op, dev)
    assert bd.total == expected
    assert bd.total.flops == sum(o.flops * o.count for o in ops)
    assert bd.total.kernels == sum(o.count for o in ops) == len(ops)
    assert bd.run == RunSpec(mode="train", batch=2, seq=32, precision="fp16-mixed", checkpoint="sqrt")


@pytest.mark.parametrize("key", GROUP_KEYS + tuple(KEY_ALIASES))
def test_group_by_totals_equal_total(bert_train, key):
    bd = bert_train
    groups = bd.group_by(key)
    assert groups
    t, s = bd.total, sum(groups.values(), Cost())
    assert (s.flops, s.bytes, s.kernels) == (t.flops, t.bytes, t.kernels)  # integers: exact
    for f in ("seconds", "compute_s", "memory_s", "overhead_s", "ideal_s"):
        assert getattr(s, f) == pytest.approx(getattr(t, f), rel=1e-9)
    assert sum(bd.shares(key).values()) == pytest.approx(1.0)


def test_group_by_pass_and_filter(bert_train):
    by_pass = bert_train.group_by("pass")
    assert set(by_pass) == {"fwd", "bwd-act", "bwd-weight", "recompute", "update"}
    fc = bert_train.group_by("group", {"block": "fc"})
    assert set(fc) == {FC_GEMM, GELU}
    assert sum(fc.values(), Cost()).kernels == sum(o.count for o in bert_train.ops if o.label("block") == "fc")


def test_to_pandas_one_row_per_op(bert_train):
    pytest.importorskip("pandas")
    df = bert_train.to_pandas()
    assert len(df) == len(bert_train.ops)
    assert list(df["name"]) == [o.name for o in bert_train.ops]
    assert df["flops"].sum() == bert_train.total.flops
    assert df["seconds"].sum() == pytest.approx(bert_train.total.seconds)


def test_to_json_parses(bert_train):
    from tstack.report import output

    data = json.loads(output.to_json(output.breakdown_document("analyze", bert_train)))
    data["ops"] = data["records"]
    assert len(data["ops"]) == len(bert_train.ops)
    assert data["summary"]["kernels"] == bert_train.total.kernels
    assert data["summary"]["flops"] == bert_train.total.flops
    assert math.isclose(data["summary"]["seconds"], bert_train.total.seconds)
    assert {"part", "layer", "block", "group", "nlpfast", "pass"} <= set(data["ops"][0])

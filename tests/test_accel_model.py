"""Whole-model accelerator costs: MAC totals, nonlinear scaling with sequence length, schedules, energy, reproduction."""

from __future__ import annotations

import pytest

from tstack.accel import nonlinear as nl
from tstack.accel.fusion import pair_cost
from tstack.accel.mapping import Infeasible
from tstack.accel.model import CATEGORIES, run
from tstack.accel.timing import GemmShape
from tstack.costmodel import systolic as accel_cost
from tstack.errors import SpecError, TstackError
from tstack.hardware.accel import KiB, load_accel
from tstack.models import load_model
from tstack.search.dse import Outcome, Point, design_points, explore, pareto, parse_size, parse_splits
from tstack.spec import RunSpec
from tstack.studies.repro_000 import reproduce_000
from tstack.workload import build
from tstack.workload.labels import DR_RC_LN

BASE, IBERT = load_accel("gemmini-baseline"), load_accel("gemmini-ibert")
H, h, F, N = 768, 12, 3072, 12  # BERT-base


def test_every_mac_of_bert_base_is_costed_once():
    r = run("bert-base", 512, IBERT)
    macs = sum(rec.timing.macs * rec.count for rec in r.records if rec.timing)
    per_layer = 4 * 512 * H * H + 2 * 512 * 512 * H + 2 * 512 * H * F  # Q, K, V, out; QKᵀ and P·V; FFN
    assert macs == N * per_layer + H * H  # + the [CLS] pooler
    assert r.seconds == pytest.approx(sum(r.by_category().values()))
    assert set(r.by_category()) == set(CATEGORIES)


def _op(seq: int, name: str, block: str = "attention"):
    ops = build(load_model("bert-base"), RunSpec(mode="infer", precision="int8", seq=seq), collapse=True)
    return next(o for o in ops if o.name == name and o.label("block") in (block, DR_RC_LN))


@pytest.mark.parametrize("cost", [lambda r, c: nl.host_cost(BASE, "softmax", r, c).seconds,
                                  lambda r, c: nl.unit_cycles(IBERT, "softmax", r, c)])
def test_softmax_grows_as_heads_times_n_squared(cost):
    """f(n) = a·h·n² + b·h·n (per-element and per-row work), so (f(4n) − 2f(2n)) / (f(2n) − 2f(n)) = 4 exactly."""
    f = {}
    for n in (128, 256, 512):
        op = _op(n, "softmax")
        assert (op.dim("rows"), op.dim("cols")) == (h * n, n)
        f[n] = cost(op.dim("rows"), op.dim("cols"))
    assert (f[512] - 2 * f[256]) / (f[256] - 2 * f[128]) == pytest.approx(4.0)
    assert f[256] - 2 * f[128] > 0  # the n² term is there, not only per-row work


@pytest.mark.parametrize("cost", [lambda r, c: nl.host_cost(BASE, "layernorm", r, c).seconds,
                                  lambda r, c: nl.unit_cycles(IBERT, "layernorm", r, c)])
def test_layernorm_grows_as_n_times_d(cost):
    """f = a·n·d + b·n (per-element work and per-row square root): linear in n, linear in d with a per-row constant."""
    f = {n: cost(_op(n, "layernorm", DR_RC_LN).dim("rows"), H) for n in (128, 256, 512)}
    assert f[256] == pytest.approx(2 * f[128]) and f[512] == pytest.approx(2 * f[256])
    g = {d: cost(512, d) for d in (H, 2 * H, 4 * H)}
    assert g[4 * H] - 2 * g[2 * H] == pytest.approx(g[2 * H] - 2 * g[H])  # both are −b·n
    assert g[2 * H] > g[H]  # the n·d term is there, not only per-row work


def test_host_softmax_counts_dequant_and_requant():
    c = nl.host_cost(BASE, "softmax", 100, 64)
    # 6 quantization ops (2 dequant + 4 requant) per element at 1 cycle on a 1 GHz host
    assert c.quant_seconds == pytest.approx(100 * 64 * 6 / 1e9)
    assert c.seconds > c.quant_seconds and c.energy.host > 0 and c.energy.dram > 0


def test_a_row_that_does_not_fit_the_accumulator_is_infeasible():
    with pytest.raises(Infeasible, match="needs 4096 accumulator rows"):
        nl.unit_cycles(IBERT.changed(accumulator={"bytes": 64 * KiB}), "softmax", 16, 4096)
    with pytest.raises(TstackError, match="no integer nonlinear units"):
        nl.unit_cycles(BASE, "softmax", 16, 64)


def test_ibert_moves_the_bottleneck_back_to_matmuls():
    base, ibert = run("bert-base", 512, BASE), run("bert-base", 512, IBERT)
    assert ibert.seconds < base.seconds
    assert base.by_category()["(de)quant"] > 0 and ibert.by_category()["(de)quant"] == 0
    assert max(ibert.by_category(), key=ibert.by_category().get) == "matmul"
    assert base.energy.host > 0 and ibert.energy.host == 0
    assert ibert.edp == pytest.approx(ibert.seconds * ibert.joules)


def test_fused_schedule_needs_units_and_pipelines_the_pair():
    with pytest.raises(TstackError, match="needs the nonlinear ops on the accelerator"):
        run("bert-base", 128, BASE, "fused")
    shape = GemmShape(512, 512, 64, 12)
    a, b = pair_cost(IBERT, shape, "softmax", "non-fused"), pair_cost(IBERT, shape, "softmax", "fused")
    units = nl.unit_cycles(IBERT, "softmax", 512 * 12, 512)
    # a two-stage pipeline takes at least its longer stage and at most the sum of both
    assert max(b.gemm_s, IBERT.seconds(units)) <= b.seconds <= b.gemm_s + IBERT.seconds(units)
    assert b.mapping.tj == 512 // 16 and a.mapping.tj < 512 // 16


def test_accel_cost_follows_the_shared_signature():
    op = _op(512, "ffn.fc1", "fc")
    c = accel_cost(op, IBERT)
    assert c.kernels == op.count == N
    assert c.flops == op.flops * N
    assert 0 < c.ideal_s < c.seconds


def test_dse_parsing_and_pareto():
    assert parse_size("--sram-total", "320KiB") == 320 * KiB
    assert parse_splits("64:256,256:64", 320 * KiB) == [(64 * KiB, 256 * KiB), (256 * KiB, 64 * KiB)]
    with pytest.raises(SpecError, match="sums to 300 KiB"):
        parse_splits("64:236", 320 * KiB)
    with pytest.raises(SpecError, match="must be a size"):
        parse_size("--sram-total", "lots")
    p = Point(1, 1, 16, 16)
    outs = [Outcome(p, 1.0, 2.0), Outcome(p, 2.0, 1.0), Outcome(p, 2.0, 2.0), Outcome(p, reason="no")]
    assert pareto(outs) == [True, True, False, False]


def test_dse_marks_infeasible_points_and_costs_the_rest():
    points = design_points([(64 * KiB, 256 * KiB), (304 * KiB, 16 * KiB)], [16], [16])
    outs = explore(IBERT, "bert-base", 128, points, executor="serial")
    assert outs[0].feasible and outs[0].latency_s > 0
    assert not outs[1].feasible and "accumulator" in outs[1].reason


def test_reproduction_rows_and_figure_runs():
    r = reproduce_000("bert-base", 128)
    keys = {row.key for row in r.rows}
    assert {"baseline-nonlinear-share", "resplit-matmul", "ibert-speedup", "softmax-share-pair"} <= keys
    assert [name for name, _ in r.fig2] == ["baseline n=128", "I-BERT n=128", "I-BERT n=256", "I-BERT n=512"]

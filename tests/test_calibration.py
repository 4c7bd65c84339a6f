"""Calibration tables and the calibrated cost model (no torch needed)."""

from __future__ import annotations

import math

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

import tstack
from tstack.calibration import Calibration, Table
from tstack.costmodel import calibrated, for_device, roofline
from tstack.errors import SpecError
from tstack.hardware.device import device_to_dict, load_device
from tstack.workload.op import Op

LABELS = (("part", "t"), ("layer", "-"), ("block", "-"), ("group", "-"), ("nlpfast", "-"), ("pass", "fwd"))


def test_table_is_exact_at_grid_points():
    t = Table(((10.0, 100.0, 1000.0),), (1e-3, 4e-3, 3e-2))
    for x, s in zip((10, 100, 1000), (1e-3, 4e-3, 3e-2)):
        assert t(x) == pytest.approx(s, rel=1e-12)


def test_table_interpolates_in_log_log_space():
    # Between (10, 1 ms) and (1000, 100 ms) time ∝ size, so log-log interpolation gives 10 ms at 100.
    t = Table(((10.0, 1000.0),), (1e-3, 1e-1))
    assert t(100) == pytest.approx(1e-2, rel=1e-12)


def test_table_extrapolates_along_the_edge_slope_clipped_to_proportional():
    # Slope 1 in log-log beyond the grid: 10× the largest size takes 10× the time.
    t = Table(((10.0, 100.0),), (1e-3, 1e-2))
    assert t(1000) == pytest.approx(1e-1, rel=1e-12)
    # A steeper last segment (a noisy point) is clipped to slope 1; a falling one to slope 0.
    steep = Table(((10.0, 100.0),), (1e-3, 1e-1))
    assert steep(1000) == pytest.approx(1.0, rel=1e-12)
    falling = Table(((10.0, 100.0),), (2e-3, 1e-3))
    assert falling(1000) == pytest.approx(1e-3, rel=1e-12)


def test_table_below_the_grid_is_the_edge_value():
    # A smaller kernel than any measured is not predicted slower (or faster) than the smallest.
    t = Table(((10.0, 100.0),), (1e-5, 1e-4))
    assert t(1) == pytest.approx(1e-5, rel=1e-12)


@given(st.floats(1.0, 100.0), st.floats(2.0, 20.0))
def test_bilinear_table_of_a_power_law_is_exact_inside_the_grid(x, y):
    # seconds = 1e-9·x·y² is linear in log space, so multilinear log-log interpolation reproduces it anywhere.
    xs, ys = (1.0, 10.0, 100.0), (2.0, 20.0)
    t = Table((xs, ys), tuple(1e-9 * a * b * b for a in xs for b in ys))
    assert t(x, y) == pytest.approx(1e-9 * x * y * y, rel=1e-9)


@pytest.mark.parametrize(("axes", "seconds", "fragment"), [
    (((1.0,),), (1.0,), "at least two grid points"),
    (((2.0, 1.0),), (1.0, 2.0), "increasing"),
    (((1.0, 2.0),), (1.0,), "needs 2"),
    (((1.0, 2.0),), (1.0, -1.0), "positive"),
])
def test_bad_tables_are_refused(axes, seconds, fragment):
    with pytest.raises(SpecError, match=fragment):
        Table(axes, seconds)


def _device_with(tables: dict[str, Table]):
    dev = load_device("xeon-gold-5220-2s")
    data = device_to_dict(dev)
    data["calibration"] = Calibration(2, tables, "test").to_dict()
    return data


def test_device_file_round_trips_with_its_calibration(tmp_path):
    tables = {"gemm.fp32": Table(((64.0, 4096.0),) * 3, tuple(1e-6 * (i + 1) for i in range(8)))}
    path = tmp_path / "dev.yaml"
    path.write_text(yaml.safe_dump(_device_with(tables)))
    dev = load_device(path)
    assert dev.calibration.threads == 2
    assert dev.calibration.tables["gemm.fp32"] == tables["gemm.fp32"]
    assert for_device(dev) is calibrated
    assert for_device(load_device("a100")) is roofline


def test_calibrated_cost_uses_the_table_and_falls_back_to_roofline(tmp_path):
    # GEMM table: seconds = 1e-12·M·N·K exactly on a log-log grid, so any GEMM interpolates to that.
    g = (64.0, 512.0, 4096.0)
    tables = {"gemm.fp32": Table((g, g, g), tuple(1e-12 * m * n * k for m in g for n in g for k in g))}
    path = tmp_path / "dev.yaml"
    path.write_text(yaml.safe_dump(_device_with(tables)))
    dev = load_device(path)
    gemm = Op("gemm", "x", (("M", 768), ("N", 128), ("K", 768), ("batch", 1)), "fp32", 2 * 768 * 128 * 768, 1, LABELS, 3)
    c = calibrated(gemm, dev)
    assert c.seconds == pytest.approx(3 * 1e-12 * 768 * 128 * 768, rel=1e-9)  # count = 3 instances
    assert c.kernels == 3
    assert math.isclose(c.compute_s + c.memory_s + c.overhead_s, c.seconds, rel_tol=1e-9)
    softmax = Op("reduction", "softmax", (("rows", 64), ("cols", 64)), "fp32", 5 * 4096, 8 * 4096, LABELS)
    assert calibrated(softmax, dev) == roofline(softmax, dev)  # no softmax table: roofline


def test_analyze_uses_the_calibrated_model_of_a_calibrated_device(tmp_path):
    g = (64.0, 512.0, 4096.0)
    tables = {"gemm.fp32": Table((g, g, g), tuple(1e-12 * m * n * k for m in g for n in g for k in g))}
    path = tmp_path / "dev.yaml"
    path.write_text(yaml.safe_dump(_device_with(tables)))
    b = tstack.analyze("bert-base", tstack.RunSpec(seq=128), path)
    q = next(c for op, c in zip(b.ops, b.costs) if op.name == "attn.q_proj")
    assert q.seconds == pytest.approx(1e-12 * 768 * 128 * 768, rel=1e-9)


def test_calibration_provenance_round_trips_and_says_quick(tmp_path):
    made = {"grid": "quick", "rounds": 1, "repeats": 2, "threads": 1, "host": "h", "cpu_model": "c",
            "probe_before": {"reference_seconds": 1e-3, "load_1min": 0.5}}
    cal = Calibration(1, {"gemm.fp32": Table(((1.0, 2.0),), (1e-3, 2e-3))}, "env", made)
    back = Calibration.from_dict(yaml.safe_load(yaml.safe_dump(cal.to_dict())), "t")
    assert back.provenance == made and back.quick
    assert not Calibration.from_dict({"threads": 1, "tables": {}}, "t").quick  # files from before provenance
    with pytest.raises(SpecError, match="provenance"):
        Calibration.from_dict({"threads": 1, "tables": {}, "provenance": ["x"]}, "t")
    with pytest.raises(SpecError, match="provenance"):
        Calibration.from_dict({"threads": 1, "tables": {}, "provenance": {"a": {"b": {"c": {"d": 1}}}}}, "t")


def test_large_batched_gemm_points_time_fewer_entries():
    from tstack.profiler.calibrate import BGEMM_BATCHES, BGEMM_MAX_FLOPS, Grid, bgemm_entries, grid_ops

    assert bgemm_entries(64, 64, 64, 128, BGEMM_BATCHES) == 128  # small entries: the batch itself
    n = bgemm_entries(1024, 1024, 1024, 128, BGEMM_BATCHES)
    assert n == min(BGEMM_BATCHES)
    for op in grid_ops(Grid())["bgemm.fp32"][1]:
        M, N, K, batch = op.gemm_shape
        assert batch >= min(BGEMM_BATCHES) and (batch in BGEMM_BATCHES or batch % min(BGEMM_BATCHES) == 0)
        assert op.flops <= BGEMM_MAX_FLOPS or batch == min(BGEMM_BATCHES)


def test_calibration_time_estimate_grows_with_the_grid_and_rounds():
    from tstack.profiler.calibrate import Grid, estimate_seconds
    from tstack.profiler.runtime import RuntimeConfig

    cfg = RuntimeConfig(threads=2)
    quick, full = estimate_seconds(Grid.quick(), cfg, 1, 5, 2e11), estimate_seconds(Grid(), cfg, 1, 5, 2e11)
    assert 0 < quick < 30 < full < 15 * 60  # the default grid is sized to finish within 15 minutes on 2 cores
    assert estimate_seconds(Grid(), cfg, 2, 5, 2e11) == pytest.approx(2 * full)


@pytest.mark.parametrize(("attention", "fusion"), [("sdpa", None), ("unfused", "flash")])
def test_fused_attention_kernel_is_priced_by_the_roofline_not_the_bgemm_table(tmp_path, attention, fusion):
    # A fused attention kernel carries the B-GEMM kind, but the B-GEMM table times plain batched matmuls of its
    # M×N×K: a table that answers 1 s for every B-GEMM must not be used for it, while the plain B-GEMMs take it.
    g = (1.0, 1e6)
    tables = {"bgemm.fp32": Table((g, g, g, g), (1.0,) * 16)}
    path = tmp_path / "dev.yaml"
    path.write_text(yaml.safe_dump(_device_with(tables)))
    dev = load_device(path)
    b = tstack.analyze("bert-base", device=dev, seq=128, attention=attention, fusion=fusion)
    fused = [(o, c) for o, c in zip(b.ops, b.costs) if o.label("fusion") == "flash-attention" or o.name == "attn.sdpa"]
    assert len(fused) == 12  # one fused attention kernel per layer of bert-base
    for op, cost in fused:
        assert cost.seconds == pytest.approx(roofline(op, dev).seconds, rel=1e-12)
    # The same run without fused attention: its score and context B-GEMMs (2 per layer, 12 layers) take the
    # table's 1 s per batch entry.
    unfused = tstack.analyze("bert-base", device=dev, seq=128)
    plain = [(o, c) for o, c in zip(unfused.ops, unfused.costs) if o.kind == "bgemm"]
    assert len(plain) == 2 * 12
    assert all(c.seconds == pytest.approx(o.count * o.dim("batch"), rel=1e-9) for o, c in plain)

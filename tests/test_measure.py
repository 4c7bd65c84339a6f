"""Measured Breakdowns: same Ops and labels as predicted ones, positive times, one measurement per signature.

Also the runtime configuration (threads, restore) and the timing helper. No assertion depends on how
fast anything runs.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from tstack import ModelSpec, RunSpec, TstackError, analyze  # noqa: E402
from tstack.errors import SpecError  # noqa: E402
from tstack.profiler import measure as M  # noqa: E402
from tstack.profiler import opexec  # noqa: E402
from tstack.profiler.runtime import RuntimeConfig, controlled, describe  # noqa: E402
from tstack.profiler.timing import Timing, TimingPlan, time_callable  # noqa: E402
from tstack.profiler.values import Values  # noqa: E402
from tstack.workload import build  # noqa: E402
from tstack.workload import formulas as F  # noqa: E402
from tstack.workload.op import Op  # noqa: E402

TINY = ModelSpec(name="tiny", arch="encoder", layers=2, hidden=64, heads=4, ffn=128, vocab=100, type_vocab=2,
                 max_positions=64)
CFG = RuntimeConfig(threads=1)
FAST = {"plan": TimingPlan(warmup=1, repeats=2)}


@pytest.fixture
def count_prepares(monkeypatch: pytest.MonkeyPatch) -> list[Op]:
    calls: list[Op] = []
    real = opexec.prepare

    def counting(op: Op, *args, **kwargs):
        calls.append(op)
        return real(op, *args, **kwargs)

    monkeypatch.setattr(opexec, "prepare", counting)
    return calls


@pytest.mark.parametrize("mode", ["infer", "train"])
def test_measured_breakdown_matches_predicted_one_to_one(mode: str) -> None:
    run = RunSpec(mode=mode, batch=2, seq=16)
    measured = M.measure(TINY, run, CFG, **FAST)
    predicted = analyze(TINY, run, "a100")
    assert measured.ops == predicted.ops  # same Ops, same order, hence the same labels one to one
    assert [op.labels for op in measured.ops] == [op.labels for op in predicted.ops]
    assert measured.device == "cpu-1t"
    assert all(c.seconds > 0 for c in measured.costs)
    assert [c.kernels for c in measured.costs] == [op.count for op in measured.ops]
    assert measured.total.flops == predicted.total.flops and measured.total.bytes == predicted.total.bytes
    for key in ("part", "layer", "block", "group", "nlpfast-op", "pass", "kind", "dtype", "name"):
        groups = measured.group_by(key)
        assert list(groups) == list(predicted.group_by(key))
        assert sum(c.seconds for c in groups.values()) == pytest.approx(measured.total.seconds)
    assert [t for t, _ in measured.hierarchy()] == [t for t, _ in predicted.hierarchy()]
    assert sum(measured.shares("group").values()) == pytest.approx(1.0)
    assert len(measured.to_pandas()) == len(measured.ops)


def test_identical_layers_are_measured_once(count_prepares: list[Op]) -> None:
    run = RunSpec(mode="train", batch=2, seq=16)
    ops = build(TINY, run)
    m = M.measure_ops(ops, CFG, **FAST)
    assert len(count_prepares) == m.unique == len({M.signature(op) for op in ops}) < len(ops)
    two_layers = len(count_prepares)
    count_prepares.clear()
    M.measure_ops(build(TINY.replace(layers=1), run), CFG, **FAST)
    assert len(count_prepares) == two_layers  # the second layer adds no new signature
    # Ops of one signature share one Timing; a GEMM's name is not part of its signature.
    by_sig: dict[tuple, Timing] = {}
    for op, t in zip(m.ops, m.timings):
        assert by_sig.setdefault(M.signature(op), t) is t
    q, out = (next(o for o in ops if o.name == n and o.label("pass") == "fwd") for n in ("attn.q_proj", "attn.out_proj"))
    assert M.signature(q) == M.signature(out)


def test_costs_scale_with_count_and_progress_is_reported() -> None:
    c = F.pointwise("residual", 8, 16, 4)
    op = Op("elementwise", "residual", c.dims, "fp32", c.flops, c.bytes, (), 5)
    seen = []
    m = M.measure_ops([op, op], CFG, progress=lambda i, n, o: seen.append((i, n, o.name)), **FAST)
    assert seen == [(1, 1, "residual")]  # one signature, measured once
    assert m.costs[0].seconds == pytest.approx(m.timings[0].median * 5)
    assert m.costs[0].kernels == 5 and m.costs[0].flops == op.flops * 5
    assert m.costs[0].compute_s == m.costs[0].memory_s == m.costs[0].ideal_s == 0
    assert m.problems[0] is not None and m.problems[0].ok
    assert "allocator" in m.description and torch.__version__ in m.description


def _gemm(K: int, dtype: str) -> Op:
    c = F.gemm(64, 64, K, 1, 2, 2)
    return Op("gemm", "ffn.fc1", c.dims, dtype, c.flops, c.bytes, ())


def test_value_check_rejects_inf_and_warns_on_subnormals(monkeypatch: pytest.MonkeyPatch) -> None:
    real = opexec.prepare
    scale = {"value": 1e3}
    monkeypatch.setattr(opexec, "prepare", lambda op, cfg, seed=0: real(op, cfg, seed, Values(scale=scale["value"])))
    with pytest.raises(TstackError, match="inf"):
        M.measure_ops([_gemm(1024, "fp16")], CFG, **FAST)
    scale["value"] = 1e-20
    with pytest.warns(RuntimeWarning, match="subnormal"):
        M.measure_ops([_gemm(64, "fp32")], CFG, **FAST)
    m = M.measure_ops([_gemm(64, "fp32")], CFG, check_values=False, **FAST)  # unchecked: no verdict
    assert m.problems == (None,)


def test_runtime_config_validates_and_restores() -> None:
    with pytest.raises(SpecError, match="device"):
        RuntimeConfig(device="tpu")
    with pytest.raises(SpecError, match="threads"):
        RuntimeConfig(threads=-1)
    assert RuntimeConfig().threads >= 1
    assert RuntimeConfig(threads=3).short_name == "cpu-3t"
    before = torch.get_num_threads()
    with controlled(RuntimeConfig(threads=1)):
        assert torch.get_num_threads() == 1
        line = describe(RuntimeConfig(threads=1))
    assert torch.get_num_threads() == before
    assert "1 threads" in line and "FTZ/DAZ on" in line and "preallocated" in line and "SCHED_" in line
    assert "FTZ/DAZ off" in describe(RuntimeConfig(threads=1, flush_denormal=False))


def test_timing_statistics() -> None:
    t = Timing.of([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (t.median, t.p10, t.p90, t.repeats) == (3.0, pytest.approx(1.4), pytest.approx(4.6), 5)
    assert t.samples == (5.0, 1.0, 3.0, 2.0, 4.0) and t.spread == pytest.approx(3.2 / 3)
    with pytest.raises(TstackError):
        Timing.of([])


def test_tiny_calls_are_batched_and_repeats_adapt() -> None:
    calls = []
    t = time_callable(lambda: calls.append(1), CFG, warmup=2, repeats=5)
    assert t.inner > 1 and t.repeats == 5 and len(t.samples) == 5
    assert len(calls) == 2 + 1 + 5 * t.inner  # warm-up, one sizing call, the samples
    assert 0 < t.p10 <= t.median <= t.p90
    longer = time_callable(lambda: None, CFG, warmup=0, repeats=2, min_time=0.02)
    assert longer.repeats > 2  # kept sampling until 20 ms were timed
    with pytest.raises(TstackError):
        time_callable(lambda: None, CFG, repeats=0)


def test_cuda_config_without_gpu_is_a_clean_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: tests/test_cuda.py covers CUDA")
    with pytest.raises(TstackError, match="cuda"):
        M.measure_ops([_gemm(8, "fp32")], RuntimeConfig(device="cuda"), **FAST)


def test_rounds_keep_each_signatures_fastest_median(monkeypatch: pytest.MonkeyPatch) -> None:
    # Fake timings: call n (0, 1, 2) of time_callable has median 10 - n for the softmax, 5 + n for the residual,
    # so with 3 rounds the softmax keeps its last round (8) and the residual its first (5).
    calls = {"softmax": 0, "residual": 0}

    def fake_time(fn, cfg, warmup, repeats, min_time):
        name = seen_name[-1]  # the op prepared last is the one being timed
        n = calls[name]
        calls[name] += 1
        t = 10 - n if name == "softmax" else 5 + n
        return Timing.of([float(t)])

    seen_name: list[str] = []
    real_prepare = opexec.prepare

    def prepare(op, cfg, seed=0):
        seen_name.append(op.name)
        return real_prepare(op, cfg, seed)

    monkeypatch.setattr(M, "time_callable", fake_time)
    monkeypatch.setattr(opexec, "prepare", prepare)
    ops = [Op("reduction", "softmax", *(lambda c: (c.dims, "fp32", c.flops, c.bytes))(F.pointwise("softmax", 4, 8, 4)), ()),
           Op("elementwise", "residual", *(lambda c: (c.dims, "fp32", c.flops, c.bytes))(F.pointwise("residual", 4, 8, 4)), ())]
    progress = []
    m = M.measure_ops(ops, CFG, TimingPlan(warmup=0, repeats=1, rounds=3), progress=lambda i, n, o: progress.append((i, n)),
                      check_values=False)
    assert [t.median for t in m.timings] == [8.0, 5.0]
    assert calls == {"softmax": 3, "residual": 3}
    assert progress == [(i, 6) for i in range(1, 7)]
    assert seen_name[:2] == ["softmax", "residual"]  # round 1 in workload order


@pytest.mark.parametrize("field,value", [("rounds", 0), ("repeats", 0), ("warmup", -1), ("rounds", True), ("min_time", -1.0)])
def test_plan_rejects_bad_values(field: str, value: object) -> None:
    with pytest.raises(TstackError, match=field):
        TimingPlan(**{field: value})


def test_calibration_rounds_keep_each_grid_points_fastest_time(monkeypatch: pytest.MonkeyPatch) -> None:
    from tstack.profiler import calibrate as C

    # Round r (0, 1) of every point returns 3 - r or 1 + r seconds by the parity of its FLOPs: the
    # tables must hold 2 (the second round's) and 1 (the first round's) respectively.
    seen: dict[Op, int] = {}

    def fake_seconds(op, cfg, repeats, draw=None):
        r = seen.get(op, 0)
        seen[op] = r + 1
        return float(3 - r if op.flops % 2 == 0 else 1 + r)

    monkeypatch.setattr(C, "_seconds", fake_seconds)
    grid = C.Grid.quick()
    ticks = []
    tables = C.measure_tables(grid, RuntimeConfig(threads=1), repeats=1, rounds=2, progress=ticks.append)
    assert len(ticks) == 2 * C.grid_size(grid) and set(seen.values()) == {2}
    for name, (_, ops) in C.grid_ops(grid).items():
        per = [op.dim("batch", 1) if op.kind == "bgemm" else 1 for op in ops]
        want = [(2.0 if op.flops % 2 == 0 else 1.0) / b for op, b in zip(ops, per)]
        assert list(tables[name].seconds) == pytest.approx(want), name

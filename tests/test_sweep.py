"""Sweeps over model and run parameters, and the parallel map under them (serial, processes, Ray)."""

from __future__ import annotations

import operator
from functools import partial

import pandas as pd
import pytest

import tstack
from tstack.parallel import pmap
from tstack.sweep import COLUMNS

GRID = {"batch": [1, 2], "seq": [64, 128]}
CONFIG_COLS = list(COLUMNS)


@pytest.fixture(scope="module")
def serial_frame() -> pd.DataFrame:
    return tstack.sweep("bert-base", GRID, device="mi100", executor="serial")


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray instance for the module (2 CPUs: CI runners have 2 cores); pmap reuses it."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def test_sweep_has_one_block_of_rows_per_configuration(serial_frame):
    df = serial_frame
    configs = df.groupby(CONFIG_COLS).ngroups
    assert configs == 4  # 2 batches × 2 sequence lengths
    assert set(zip(df["batch"], df["seq"])) == {(1, 64), (1, 128), (2, 64), (2, 128)}
    # every configuration lists the same 002 groups, once each
    groups = df.groupby(CONFIG_COLS)["group"].apply(lambda g: tuple(sorted(g)))
    assert groups.nunique() == 1
    assert not df.duplicated(CONFIG_COLS + ["group"]).any()
    assert {"Linear GEMM", "FC GEMM", "Attn B-GEMM"} <= set(df["group"])


def test_sweep_shares_sum_to_one_per_configuration(serial_frame):
    sums = serial_frame.groupby(CONFIG_COLS)["share"].sum()
    assert ((sums - 1.0).abs() < 1e-9).all()
    assert (serial_frame["share"] >= 0).all()


def test_sweep_share_is_seconds_over_configuration_total(serial_frame):
    df = serial_frame
    total = df.groupby(CONFIG_COLS)["seconds"].transform("sum")
    assert ((df["share"] - df["seconds"] / total).abs() < 1e-12).all()


def test_sweep_matches_analyze_per_configuration(serial_frame):
    for (batch, seq), rows in serial_frame.groupby(["batch", "seq"]):
        b = tstack.analyze("bert-base", device="mi100", batch=int(batch), seq=int(seq))
        assert rows["flops"].sum() == b.total.flops
        assert rows["seconds"].sum() == pytest.approx(b.total.seconds, rel=1e-9)
        shares = b.shares("group")
        for _, row in rows.iterrows():
            assert row["share"] == pytest.approx(shares[row["group"]], rel=1e-9)


def test_sweep_model_axes_keep_ffn_at_four_hidden():
    # bert-base has d_ff = 4·d_model (3072 = 4·768), so sweeping d_model keeps that ratio (12 heads divide both).
    df = tstack.sweep("bert-base", {"layers": [2, 4], "hidden": [384, 768]}, device="mi100", executor="serial")
    assert df.groupby(CONFIG_COLS).ngroups == 4
    assert set(zip(df["layers"], df["hidden"])) == {(2, 384), (2, 768), (4, 384), (4, 768)}
    assert (df["ffn"] == 4 * df["hidden"]).all()


def test_sweep_paper_symbols_are_axis_aliases(serial_frame):
    df = tstack.sweep("bert-base", {"B": [1, 2], "n": [64, 128]}, device="mi100", executor="serial")
    pd.testing.assert_frame_equal(df, serial_frame, check_exact=True)


def test_sweep_progress_counts_every_configuration():
    seen: list[int] = []
    tstack.sweep("bert-base", {"batch": [1, 2, 3]}, device="mi100", executor="serial", progress=seen.append)
    assert sum(seen) == 3


def test_sweep_unknown_axis_is_a_tstack_error():
    with pytest.raises(tstack.TstackError) as info:
        tstack.sweep("bert-base", {"batchsize": [1]}, device="mi100", executor="serial")
    assert "'batchsize'" in str(info.value)


def test_sweep_empty_axis_is_a_tstack_error():
    with pytest.raises(tstack.TstackError):
        tstack.sweep("bert-base", {"batch": []}, device="mi100", executor="serial")


def test_sweep_invalid_point_is_a_spec_error():
    with pytest.raises(tstack.SpecError) as info:
        tstack.sweep("bert-base", {"heads": [12, 5]}, device="mi100", executor="serial")
    assert "heads=5" in str(info.value)


# --- pmap -------------------------------------------------------------------------------------------------

TRIPLE = partial(operator.mul, 3)  # picklable by reference in worker processes and Ray workers


@pytest.mark.parametrize("executor", ["serial", "process"])
def test_pmap_preserves_order(executor):
    items = list(range(50))  # 2 workers -> chunks of 6: several chunks per worker
    assert pmap(TRIPLE, items, executor=executor, workers=2) == [3 * x for x in items]


@pytest.mark.parametrize("executor", ["serial", "process"])
def test_pmap_progress_reports_every_item(executor):
    seen: list[int] = []
    pmap(TRIPLE, list(range(37)), executor=executor, workers=2, progress=seen.append)
    assert sum(seen) == 37 and all(n > 0 for n in seen)


def test_pmap_empty_input():
    assert pmap(TRIPLE, [], executor="process", workers=2) == []


def test_pmap_unknown_executor_is_a_tstack_error():
    with pytest.raises(tstack.TstackError) as info:
        pmap(TRIPLE, [1, 2], executor="threads")
    assert "'threads'" in str(info.value) and "process" in str(info.value)


# --- Ray last: worker processes are not forked from a process that runs Ray -------------------------------

@pytest.mark.parametrize("executor", ["process", "ray"])
def test_executors_give_identical_frames(serial_frame, executor, request):
    if executor == "ray":
        request.getfixturevalue("ray_session")
    df = tstack.sweep("bert-base", GRID, device="mi100", executor=executor, workers=2)
    pd.testing.assert_frame_equal(df, serial_frame, check_exact=True)


@pytest.mark.parametrize("executor", ["process", "ray"])
def test_worker_spec_error_arrives_as_the_serial_one(executor, request):
    # seq=1024 > bert-base's 512 positions fails inside evaluate(), i.e. in a worker
    grid = {"seq": [128, 1024]}
    with pytest.raises(tstack.SpecError) as serial:
        tstack.sweep("bert-base", grid, device="mi100", executor="serial")
    if executor == "ray":
        request.getfixturevalue("ray_session")
    with pytest.raises(tstack.SpecError) as worker:
        tstack.sweep("bert-base", grid, device="mi100", executor=executor, workers=2)
    assert "seq=1024" in str(serial.value)
    assert str(worker.value) == str(serial.value)  # one line, no remote traceback


def test_pmap_preserves_order_on_ray(ray_session):
    items = list(range(50))
    assert pmap(TRIPLE, items, executor="ray", workers=2) == [3 * x for x in items]
    assert ray_session.is_initialized()  # pmap leaves a Ray instance it did not start running

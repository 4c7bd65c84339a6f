"""The memory guard refuses oversized runs before allocating; row writers keep finished rows."""

from __future__ import annotations

import csv
import json

import pytest

import tstack
import tstack.workload.params
from tstack.errors import TstackError
from tstack.profiler import memory
from tstack.report.rows import RowWriter


def test_guard_refuses_a_run_that_does_not_fit_and_names_the_sizes():
    model = tstack.load_model("bert-large")
    run = tstack.RunSpec(mode="train", batch=64, seq=512)
    est = memory.whole_model_peak(model, run, tstack.build(model, run))
    with pytest.raises(TstackError, match=r"needs about .* only .* available .*reduce --batch or --seq"):
        memory.guard(est, "cpu", available=est.peak)  # the estimate plus no headroom does not fit


def test_guard_passes_a_run_that_fits():
    model = tstack.load_model("bert-base")
    run = tstack.RunSpec(batch=1, seq=128)
    memory.guard(memory.per_op_peak(tstack.build(model, run)), "cpu", available=1e12)


def test_training_needs_more_than_inference():
    # Training holds w, g, m, v (16 bytes per parameter) and every forward activation;
    # inference holds the fp32 weights (4 bytes per parameter) and one layer's activations.
    model = tstack.load_model("bert-base")
    params = tstack.workload.params.param_count(model)
    irun, trun = tstack.RunSpec(batch=8, seq=128), tstack.RunSpec(mode="train", batch=8, seq=128)
    infer = memory.whole_model_peak(model, irun, tstack.build(model, irun))
    train = memory.whole_model_peak(model, trun, tstack.build(model, trun))
    assert 4 * params < infer.peak < 16 * params
    assert train.peak - 16 * params > 12 * (infer.peak - 4 * params)  # activations of 12 layers vs one


def test_available_memory_is_read_from_the_host():
    assert memory.available_bytes("cpu") > 0


def test_csv_rows_survive_an_interrupted_sweep(tmp_path):
    path = tmp_path / "rows.csv"
    w = RowWriter(path)
    w.append([{"config": 1, "t": 0.5}, {"config": 1, "t": 0.25}])
    w.append([{"config": 2, "t": 0.125}])
    # The sweep is interrupted here: what finished is on disk, complete.
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert [r["config"] for r in rows] == ["1", "1", "2"]


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_json_rows_are_complete_after_each_append(tmp_path, suffix):
    path = tmp_path / f"rows{suffix}"
    w = RowWriter(path)
    w.append([{"a": 1}])
    first = path.read_text()
    w.append([{"a": 2}])
    text = path.read_text()
    rows = json.loads(text) if suffix == ".json" else [json.loads(line) for line in text.splitlines()]
    assert rows == [{"a": 1}, {"a": 2}]
    assert first  # the first configuration was already on disk before the second ran


def test_row_writer_refuses_unknown_suffix_and_missing_folder(tmp_path):
    with pytest.raises(TstackError, match="must end in"):
        RowWriter(tmp_path / "x.txt")
    with pytest.raises(TstackError, match="does not exist"):
        RowWriter(tmp_path / "missing" / "x.csv")


def test_rows_are_json_ready_and_csv_keeps_new_columns(tmp_path):
    """Non-finite values become null (strict JSON); a later CSV batch with a new column rewrites the file with it."""
    import json as _json

    import pandas as pd

    jl = tmp_path / "r.jsonl"
    with RowWriter(jl) as w:
        w.append([{"a": float("inf"), "b": 1}])
    assert _json.loads(jl.read_text()) == {"a": None, "b": 1}
    path = tmp_path / "r.csv"
    with RowWriter(path) as w:
        w.append([{"a": 1, "b": 2}])
        w.append([{"a": 3, "c": 4}])
    df = pd.read_csv(path)
    assert list(df.columns) == ["a", "b", "c"] and list(df["a"]) == [1, 3] and df["c"].iloc[1] == 4
    assert not (tmp_path / ".r.csv.lock").exists()

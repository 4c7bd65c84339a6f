"""Layout search: every result legal, fitting memory, ranked; the vectorized composition equals one-by-one evaluation;
the CLI of `tstack cluster`."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tstack.cli.core import run as cli
from tstack.costmodel.cluster import evaluate
from tstack.hardware.device import load_device
from tstack.hardware.network import load_network
from tstack.models import load_model
from tstack.search.cluster import SearchSpace, families, family_layouts, layout_of, legal, search
from tstack.spec import ModelSpec, RunSpec

A100, DGX = load_device("a100-80gb"), load_network("dgx-a100")
RUN = RunSpec(mode="train", seq=256, precision="fp16-mixed", optimizer="adam")

models = st.builds(
    lambda layers, heads, head_dim, mult, kv, experts: ModelSpec(
        name="rand", arch="decoder", layers=layers, hidden=heads * head_dim, heads=heads, kv_heads=heads // kv,
        ffn=mult * heads * head_dim, vocab=1000, max_positions=256, norm_position="pre", head="lm", experts=experts,
        top_k=min(2, experts)),
    st.integers(1, 12), st.sampled_from([2, 4, 6, 8, 12]), st.sampled_from([32, 64]), st.sampled_from([2, 4]),
    st.sampled_from([1, 2, 4]), st.sampled_from([0, 0, 4, 6]))


@given(model=models, gpus=st.integers(1, 48), batch_mult=st.integers(1, 4))
@settings(max_examples=15, deadline=None)
def test_search_results_are_legal_fit_and_ranked(model, gpus, batch_mult):
    space = SearchSpace(gpus=gpus, global_batch=gpus * batch_mult, max_micro_batch=4)
    result = search(model, RUN, A100, DGX, space, executor="serial")
    rows = result.rows()
    assert result.evaluated >= len(rows)
    for row in rows:
        assert legal(model, row, space, RUN.seq) == []
        assert row["memory"] <= A100.memory_capacity
    seconds = [r["seconds"] for r in rows]
    assert seconds == sorted(seconds)
    if rows:
        assert rows[0]["pareto"]


def test_vectorized_search_equals_evaluating_each_layout():
    model = load_model("gpt2")
    space = SearchSpace(gpus=8, global_batch=16)
    result = search(model, RUN, A100, DGX, space, executor="serial")
    for row in result.rows()[:: max(1, len(result.rows()) // 25)]:
        r = evaluate(model, RUN, A100, DGX, layout_of(row, space.global_batch))
        assert r.seconds == pytest.approx(row["seconds"], rel=1e-9)
        assert r.memory()["total"] == pytest.approx(row["memory"], rel=1e-9)


def test_search_enumerates_every_legal_layout():
    model = load_model("gpt2")  # 12 layers, 12 heads, ffn 3072
    space = SearchSpace(gpus=4, global_batch=4, recompute=("none",), zero=(0,))
    keys = families(model, RUN.seq, space)
    assert {key[4] for key in keys} == {1}  # a dense model: no expert parallelism
    n = sum(len(family_layouts(model, space, tp, mb)["pp"]) for tp, mb, rc, sp, ep in keys)
    # by hand: (tp, pp, dp) in {(1,1,4), (1,2,2), (1,4,1), (2,1,2), (2,2,1), (4,1,1)}; micro-batches divide 4/dp;
    # interleave divides 12/pp when pp > 1; overlap none|layer when dp > 1; sequence parallel doubles tp > 1
    by_hand = (1 * 2) + (2 * 4 * 2) + (3 * 2) + 2 * (2 * 2) + 2 * (3 * 4) + 2 * (3 * 1)  # = 62
    assert n == by_hand


def test_search_enumerates_expert_parallelism():
    model = load_model("mixtral-tiny")  # 4 layers, 8 experts
    space = SearchSpace(gpus=4, global_batch=4, recompute=("none",), zero=(0,))
    result = search(model, RUN, A100, DGX, space, executor="serial")
    rows = result.rows()
    # ep divides dp and the 8 experts: dp 4 → ep 1, 2, 4; dp 2 → 1, 2; dp 1 → 1 (tp·pp take the rest)
    assert {(r["dp"], r["ep"]) for r in rows} == {(4, 1), (4, 2), (4, 4), (2, 1), (2, 2), (1, 1)}
    for row in rows[:: max(1, len(rows) // 15)]:
        assert legal(model, row, space, RUN.seq) == []
        r = evaluate(model, RUN, A100, DGX, layout_of(row, space.global_batch))
        assert r.seconds == pytest.approx(row["seconds"], rel=1e-9)
        assert r.memory()["total"] == pytest.approx(row["memory"], rel=1e-9)


def _json(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli([*argv, "--json", "-"])
    assert code == 0, err.getvalue()
    return json.loads(out.getvalue())


def test_cli_issue_example_summary():
    doc = _json(["cluster", "gpt3-175b", "--gpus", "64", "--tp", "8", "--pp", "8", "--interleave", "3",
                 "--global-batch", "64", "--micro-batch", "1", "--recompute", "selective", "--seq-parallel",
                 "--precision", "fp16-mixed", "--device", "a100-80gb", "--network", "dgx-a100"])
    s = doc["summary"]
    assert set(s["memory_bytes_per_device"]) == {"weights", "gradients", "optimizer", "activations", "total"}
    assert s["fits"] and 12.0 < s["seconds_per_iteration"] < 15.5  # Korthikanti et al. 2022 Table 5: 13.75 s
    assert sum(r["seconds"] for r in doc["records"]) == pytest.approx(s["seconds_per_iteration"])
    assert 100 < s["model_tflops_per_device"] < 312


def test_cli_overlap_list_gives_one_layout_each():
    doc = _json(["cluster", "bert-large", "--gpus", "128", "--dp", "128", "--batch", "16", "--seq", "128",
                 "--device", "v100", "--network", "pcie4", "--overlap", "none,layer"])
    none, layer = doc["summary"]["layouts"]
    assert none["seconds_per_iteration"] > layer["seconds_per_iteration"]


def test_cli_mixture_of_experts():
    doc = _json(["cluster", "mixtral-tiny", "--gpus", "8", "--dp", "8", "--ep", "8", "--seq", "256"])
    s = doc["summary"]
    assert (s["experts"], s["top_k"], s["ep"]) == (8, 2, 8)
    assert any(r["group"] == "EP all-to-all" for r in doc["records"])


@pytest.mark.parametrize("argv,message", [
    (["cluster", "bert-large", "--gpus", "10", "--tp", "4"], "--gpus=10 is not a multiple of tp·pp=4"),
    (["cluster", "bert-large", "--tp", "3"], "tp=3 must divide heads=16"),
    (["cluster", "mixtral-tiny", "--gpus", "8", "--ep", "3"], "ep=3 must divide dp=8 and experts=8"),
    (["cluster", "bert-large", "--recompute", "some"], "--recompute='some' is not one of none, selective, full"),
    (["cluster", "bert-large", "--device", "xeon-gold-5220-2s"], "needs a GPU device"),
    (["cluster", "search", "bert-large", "--gpus", "0", "--global-batch", "8"], "--gpus=0"),
])
def test_cli_bad_input_one_line(argv, message):
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = cli(argv)
    assert code == 2 and message in err.getvalue() and len(err.getvalue().strip().splitlines()) == 1


def test_presets_list_the_networks():
    doc = _json(["presets"])
    nets = {r["name"]: r for r in doc["records"] if r["type"] == "network"}
    assert set(nets) == {"pcie4", "dgx-v100", "dgx-a100", "dgx-h100"}
    a100 = nets["dgx-a100"]  # 300 GB/s NVSwitch per direction inside a node of 8, 25 GB/s InfiniBand across
    assert (a100["devices_per_node"], a100["node_bytes_per_second"], a100["cluster_bytes_per_second"]) == (8, 300e9, 25e9)

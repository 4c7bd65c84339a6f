"""The multi-device model against measured Megatron-LM iterations (Korthikanti et al. 2022, "Reducing Activation
Recomputation in Large Transformer Models", Table 5: A100 80 GB DGX nodes, fp16, sequence 2048, vocabulary 51,200).

Constants are the presets' as they are (a100-80gb from the data sheet, dgx-a100 from the data sheets with typical
NCCL efficiencies); nothing here is fitted to this table. Goal: ≤ 5% mean absolute error (Calculon reports 3.65%).
"""

from __future__ import annotations

import pytest

from tstack.costmodel.cluster import Layout, evaluate
from tstack.hardware.device import load_device
from tstack.hardware.network import load_network
from tstack.models import load_model
from tstack.spec import RunSpec

# model, TP, PP, interleave, global batch, micro-batch, seconds with full recompute, with selective + sequence parallel
TABLE5 = (
    ("megatron-22b", 8, 1, 1, 4, 4, 1.42, 1.10),
    ("gpt3-175b", 8, 8, 3, 64, 1, 18.13, 13.75),
    ("megatron-530b", 8, 35, 3, 280, 1, 49.05, 37.83),
    ("megatron-1t", 8, 64, 1, 512, 1, 94.42, 71.49),
)
CASES = [(name, tp, pp, v, gb, mb, rc, sp, seconds)
         for name, tp, pp, v, gb, mb, full, sel in TABLE5
         for rc, sp, seconds in (("full", False, full), ("selective", True, sel))]


def _predict(name, tp, pp, v, gb, mb, rc, sp):
    run = RunSpec(mode="train", seq=2048, precision="fp16-mixed", optimizer="adam")
    lay = Layout(dp=1, tp=tp, pp=pp, interleave=v, micro_batch=mb, global_batch=gb, recompute=rc, seq_parallel=sp)
    return evaluate(load_model(name), run, load_device("a100-80gb"), load_network("dgx-a100"), lay)


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[6]}" for c in CASES])
def test_table5_case_within_6_percent_and_fits(case):
    *layout, measured = case
    r = _predict(*layout)
    assert abs(r.seconds / measured - 1) <= 0.06, (r.seconds, measured)
    assert r.fits  # Megatron ran every one of these on 80 GB devices


def test_table5_mean_absolute_error_within_goal():
    errors = [abs(_predict(*layout).seconds / measured - 1) for *layout, measured in CASES]
    assert sum(errors) / len(errors) <= 0.05


def test_selective_recompute_saves_what_table5_says():
    # Table 5: selective + sequence parallelism saves 23–24% of the iteration against full recomputation
    for name, tp, pp, v, gb, mb, full, sel in TABLE5:
        full_r = _predict(name, tp, pp, v, gb, mb, "full", False).seconds
        sel_r = _predict(name, tp, pp, v, gb, mb, "selective", True).seconds
        assert abs((1 - sel_r / full_r) - (1 - sel / full)) < 0.05


def test_fig11_trends_of_002():
    """002 §5.2's qualitative claims on Fig. 11 (the numbers and their gaps are `tstack repro 002 --section
    multi-device`): overlap hides D1's communication; 8-way slicing communicates more than 2-way; LAMB's share falls
    with the slicing; the replicated DR+RC+LN grows."""
    from tstack.studies.repro_002_cluster import fig11, reproduce_002_cluster, share
    from tstack.workload.labels import DR_RC_LN, LAMB

    r = fig11()
    comm = {k: share(v, "communication") for k, v in r.items()}
    assert comm["S1"] == 0 and comm["D2"] < comm["D1"] / 4 and comm["T1"] < comm["T2"]
    assert share(r["T2"], group=LAMB) < share(r["T1"], group=LAMB) < share(r["S1"], group=LAMB)
    assert share(r["T2"], "compute", DR_RC_LN) > share(r["S1"], "compute", DR_RC_LN)
    rows = {row.key: row for row in reproduce_002_cluster()}
    assert rows["fig11.d1.comm"].paper == "19%" and rows["fig11.t2.comm"].target == (0.42, 0.42)

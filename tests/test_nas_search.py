"""Hardware-aware NAS, the torch-free part: spaces, hardware cost (lookup table vs direct), Pareto sets, searches."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tstack.costmodel.backend import load_target
from tstack.errors import SpecError, UnknownNameError
from tstack.search import nas

SMALL = nas.load_space("paper-small")
GEMMINI = load_target("gemmini-ibert")
LUT = nas.Lut(SMALL, GEMMINI)  # filled as the tests ask; shared, since filling is the slow part


def fake_perplexity(a: nas.Arch) -> float:
    """A perplexity that falls with size, as a trained supernet's does (the searches only compare numbers)."""
    return 3.0 + 40.0 / (a.layers * a.hidden) ** 0.5 + 30.0 / a.ffn + 0.01 * a.heads


def test_presets_hold_the_papers_space():
    paper = nas.load_space("paper")
    assert paper.layers == (3, 4, 5, 6) and paper.heads == (4, 6, 8, 10, 12)  # 000 §IV-1
    assert (min(paper.hidden), max(paper.hidden), min(paper.ffn), max(paper.ffn)) == (384, 768, 768, 3072)
    assert (paper.seq, paper.batch) == (512, 16)
    # paper-small: hidden, FFN and sequence / 4, the same head counts
    assert SMALL.hidden == tuple(h // 4 for h in paper.hidden) and SMALL.ffn == tuple(f // 4 for f in paper.ffn)
    assert SMALL.heads == paper.heads and SMALL.seq == paper.seq // 4
    # 4 layer choices x 10 FFN sizes x 21 (hidden, heads) pairs where the heads divide the hidden size
    assert nas.feasible_count(SMALL) == 4 * 10 * 21


def test_infeasible_subnets_raise_the_search_exception():
    with pytest.raises(nas.Infeasible, match="does not divide"):
        SMALL.check(nas.Arch(2, 10, 96, 192))  # 96 / 10 heads
    with pytest.raises(nas.Infeasible, match="layers=7"):
        SMALL.check(nas.Arch(7, 4, 96, 192))
    assert SMALL.check(SMALL.smallest) == nas.Arch(1, 4, 96, 192)


def test_bad_space_files_name_the_field(tmp_path):
    bad = tmp_path / "s.yaml"
    bad.write_text("layers: [1, 2]\nheads: [3]\nhidden: [16]\nffn: [32]\nseq: 0\nbatch: 2\nlr: 0.001\n")
    with pytest.raises(SpecError, match=r"seq=0 must be an integer in \[1, 65536\]"):
        nas.load_space(bad)
    with pytest.raises(UnknownNameError, match="unknown space"):
        nas.load_space("no-such-space")


@pytest.mark.parametrize("hw", ["gemmini-ibert", "a100-80gb"])
def test_lookup_table_and_direct_cost_agree(hw):
    target = load_target(hw)
    lut = nas.Lut(SMALL, target)
    rng = random.Random(1)
    for a in [SMALL.largest, SMALL.smallest] + [SMALL.sample(rng) for _ in range(20)]:
        d, t = nas.direct_cost(SMALL, a, target), lut.cost(a)
        assert t.latency_s == pytest.approx(d.latency_s, rel=1e-9)
        assert (math.isnan(t.joules) and math.isnan(d.joules)) or t.joules == pytest.approx(d.joules, rel=1e-9)
    assert math.isnan(d.joules) == (hw == "a100-80gb")  # the roofline device models no energy


def test_lookup_table_scales_with_layers():
    one, four = LUT.cost(nas.Arch(1, 4, 128, 512)), LUT.cost(nas.Arch(4, 4, 128, 512))
    other = sum(r[1] for r in LUT.other_rows[128])
    assert four.latency_s - other == pytest.approx(4 * (one.latency_s - other), rel=1e-12)
    records = LUT.records()
    # one record per row: the per-layer rows of every (hidden, heads, ffn) filled plus the outside rows per hidden
    assert len(records) == len(LUT) > 0 and all(r["seconds"] >= 0 for r in records)
    assert sum(r["part"] == "per layer" for r in records) == sum(map(len, LUT.layer_rows.values()))


points = st.lists(st.tuples(st.floats(0, 10, allow_nan=False), st.floats(0, 10, allow_nan=False)), max_size=40)


def dominates(p, q):
    """Brute force: ``p`` is nowhere worse than ``q`` and better somewhere (both coordinates minimised)."""
    return p[0] <= q[0] and p[1] <= q[1] and (p[0] < q[0] or p[1] < q[1])


@given(points)
def test_pareto_set_is_non_dominated_and_complete(pts):
    mask = nas.pareto_mask(pts)
    for i, p in enumerate(pts):
        beaten = any(dominates(q, p) for q in pts)
        assert bool(mask[i]) == (not beaten)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(algorithm=st.sampled_from(nas.ALGORITHMS), objective=st.sampled_from(nas.OBJECTIVES),
       max_latency=st.one_of(st.none(), st.floats(2e-4, 3e-3)), max_weights=st.one_of(st.none(), st.floats(1e5, 2e6)),
       seed=st.integers(0, 100))
def test_every_returned_candidate_is_in_the_space_and_meets_the_constraints(algorithm, objective, max_latency,
                                                                            max_weights, seed):
    limits = nas.Constraints(max_latency_s=max_latency, max_weight_bytes=max_weights)
    ev = nas.Evaluator(SMALL, LUT.cost, fake_perplexity, 60, limits,
                       weights=lambda a: nas.weight_bytes(SMALL, a, GEMMINI), executor="serial")
    if algorithm == "evolution":
        r = nas.evolution(ev, objective, 12, 5, 0.2, seed)
    elif algorithm == "nsga2":
        r = nas.nsga2(ev, objective, 12, 5, 0.2, seed)
    else:
        r = nas.random_search(ev, objective, seed)
    assert len(r.candidates) <= 60
    for c in r.candidates:
        assert SMALL.check(c.arch) == c.arch and c.arch.hidden % c.arch.heads == 0
        assert max_latency is None or c.cost.latency_s <= max_latency
        assert max_weights is None or c.weight_bytes <= max_weights
        assert c.perplexity == fake_perplexity(c.arch)
    assert {c.arch for c in r.front} <= {c.arch for c in r.candidates}
    assert all(reason for reason in r.skipped.values())  # every skipped subnet carries its Infeasible reason


def test_searches_share_one_budget():
    def run(name):
        ev = nas.Evaluator(SMALL, LUT.cost, fake_perplexity, 80, executor="serial")
        return {"evolution": lambda: nas.evolution(ev, "edp", 16, 40, 0.2), "random": lambda: nas.random_search(ev, "edp"),
                "nsga2": lambda: nas.nsga2(ev, "edp", 16, 40, 0.2)}[name]()

    for name in nas.ALGORITHMS:
        r = run(name)
        assert len(r.candidates) == 80, name  # the budget, and no more
        front = {c.arch for c in r.front}
        pts = [nas.objectives(c, "edp") for c in r.candidates]
        assert front == {c.arch for c, p in zip(r.candidates, pts) if not any(dominates(q, p) for q in pts)}


def test_evaluator_evaluates_each_subnet_once_and_skips_infeasible():
    calls = []

    def ppl(a):
        calls.append(a)
        return 5.0

    ev = nas.Evaluator(SMALL, lambda a: nas.HwCost(1.0, 1.0), ppl, 10, executor="serial")
    a, bad = nas.Arch(2, 4, 96, 192), nas.Arch(2, 10, 96, 192)
    got = ev.evaluate([a, a, bad, a])
    assert [c.arch for c in got] == [a] and calls == [a]
    assert ev.evaluate([a]) and calls == [a]
    assert "does not divide" in ev.skipped[bad]


def test_reductions_read_the_front_at_a_perplexity_budget():
    base = nas.Candidate(nas.Arch(4, 12, 192, 768), 4.0, nas.HwCost(8.0, 4.0), 0.0)
    near = nas.Candidate(nas.Arch(3, 12, 192, 768), 4.05, nas.HwCost(4.0, 2.0), 0.0)
    far = nas.Candidate(nas.Arch(1, 4, 96, 192), 4.9, nas.HwCost(1.0, 1.0), 0.0)
    rows = {(r["metric"], r["perplexity_delta"]): r for r in nas.reductions([base, near, far], base)}
    # +0.1 admits `near` (4.05 <= 4.1): latency 8/4 = 2, energy 4/2 = 2, EDP 32/8 = 4
    assert rows[("latency", 0.1)]["reduction"] == 2.0 and rows[("edp", 0.1)]["reduction"] == 4.0
    # +1 admits `far` (4.9 <= 5.0): latency 8/1, EDP 32/1
    assert rows[("latency", 1.0)]["reduction"] == 8.0 and rows[("edp", 1.0)]["reduction"] == 32.0
    assert rows[("edp", 1.0)]["paper_reduction"] == 10.6 and rows[("latency", 0.1)]["paper_reduction"] == 1.4

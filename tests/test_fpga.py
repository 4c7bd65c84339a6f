"""The FPGA model (hardware/fpga.py, costmodel/fpga.py) and the allocation search (search/fpga_alloc.py)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tstack.accel.mapping import Infeasible
from tstack.costmodel.fpga import OpTable, Skip, energy, lane_cost, op_table, parse_variant
from tstack.errors import SpecError
from tstack.hardware.fpga import RESOURCES, fpga_from_dict, load_fpga
from tstack.models import load_model
from tstack.search.fpga_alloc import allocate, cross, exact, rebalance, slsqp, uniform


@pytest.fixture(scope="module")
def vcu118():
    return load_fpga("vcu118")


@pytest.fixture(scope="module")
def bert():
    return load_model("nlpfast-bert")


def test_vcu118_is_the_papers_board(vcu118):
    assert (vcu118.luts, vcu118.ffs, vcu118.dsps, vcu118.bram36_blocks, vcu118.uram_blocks) == \
        (1_182_240, 2_364_480, 6_840, 2_160, 960)
    assert vcu118.clock_hz == 100e6
    # two DDR4-2400 banks give 38.4 GB/s, but two 512-bit AXI ports at 100 MHz carry 2 × 64 B × 1e8 = 12.8 GB/s
    assert vcu118.memory_bytes_per_s == pytest.approx(12.8e9)
    # 2,160 × 36 Kb + 960 × 288 Kb = 75.9 Mb + 270 Mb
    assert vcu118.on_chip_bytes * 8 / 2**20 == pytest.approx(75.9375 + 270)
    assert load_fpga("u250").memory_bytes_per_s == pytest.approx(76.8e9)  # 4 × 64 B × 300 MHz


def test_a_bad_fpga_file_names_the_field():
    with pytest.raises(SpecError, match="dsps"):
        fpga_from_dict({**_vcu118_dict(), "dsps": -1}, "f.yaml")
    with pytest.raises(SpecError, match="missing field 'clock_hz'"):
        fpga_from_dict({k: v for k, v in _vcu118_dict().items() if k != "clock_hz"}, "f.yaml")


def _vcu118_dict():
    from dataclasses import asdict

    d = asdict(load_fpga("vcu118"))
    d["sources"] = list(d["sources"])
    return d


def test_one_operation_latency_is_the_hand_derivation(vcu118, bert):
    t = op_table(bert, 256, vcu118, parse_variant("base"))
    n = np.full(t.k, 100)
    tm = t.timing(n)
    # Q-Gen: s·d² = 256 · 1024² = 268,435,456 MACs over 100 lanes = 2,684,355 cycles (rounded up), plus the fill of
    # one fmul (4 stages) and one fadd (5): 2,684,364 cycles at 100 MHz = 26.84364 ms
    assert tm.compute_s[0] == pytest.approx(2_684_364 / 1e8, rel=1e-12)
    # while it computes: its write-back of Q (256 · 1024 · 4 B = 1,048,576 B) and K/V-Gen's prefetch of W_K, W_V
    # (2 · 1024² · 4 B = 8,388,608 B) and X (1,048,576 B): 10,485,760 B at 12.8 GB/s = 819.2 µs; no stall
    assert tm.memory_s[0] == pytest.approx(10_485_760 / 12.8e9, rel=1e-12)
    assert tm.stall_s[0] == 0.0
    # softmax with one lane per element: ceil(256² · 16 / 1,048,576) = 1 cycle + 37 stages (fcmp 1, 2 fadd 10,
    # fexp 10, fdiv 16) = 38 cycles = 0.38 µs; it writes P (4 MiB) in 327.68 µs: it stalls for the difference
    soft = t.names.index("softmax")
    n[soft] = 256 * 256 * 16
    tm = t.timing(n)
    assert tm.compute_s[soft] == pytest.approx(38 / 1e8)
    assert tm.stall_s[soft] == pytest.approx(4 * 2**20 / 12.8e9 - 38 / 1e8)
    assert t.layers == 24 and tm.seconds == pytest.approx(tm.op_s.sum() * 24)


def test_lane_costs_add_their_cores():
    # mac = fmul (321 LUT, 143 FF, 3 DSP, 4 stages) + fadd (390, 205, 2, 5), two operand streams: one BRAM36
    res, depth = lane_cost("mac")
    assert res == {"lut": 711, "ff": 348, "dsp": 5, "bram": 1.0} and depth == 9
    # gelu = 6 fmul + 4 fadd + fexp (935, 277, 7, 10) + fdiv (994, 761, 0, 16): LUT 6·321 + 4·390 + 935 + 994 = 5415,
    # FF 6·143 + 4·205 + 277 + 761 = 2716, DSP 6·3 + 4·2 + 7 = 33, stages 6·4 + 4·5 + 10 + 16 = 70; one stream: 0.5
    res, depth = lane_cost("gelu")
    assert res == {"lut": 5415, "ff": 2716, "dsp": 33, "bram": 0.5} and depth == 70


def test_partitioning_and_skipping_remove_traffic_and_work(vcu118, bert):
    base = op_table(bert, 256, vcu118, parse_variant("base"))
    mp = op_table(bert, 256, vcu118, parse_variant("MP"))
    zs = op_table(bert, 256, vcu118, parse_variant("MP+ZS"), Skip(0.5, 0.25))
    assert mp.spill_bytes.sum() < base.spill_bytes.sum() and mp.write_bytes.sum() < base.write_bytes.sum()
    assert np.array_equal(mp.prefetch_bytes, base.prefetch_bytes)  # weights are read once in every variant
    soft, vgen = base.names.index("softmax"), base.names.index("K/V-Gen")
    assert zs.work[soft] == pytest.approx(0.5 * mp.work[soft])
    assert zs.work[vgen] == pytest.approx(mp.work[vgen] * (1 + 0.75) / 2)
    assert parse_variant("MP+ZS").name == "MP+ZS" and parse_variant("P+C").name == "P+C"
    with pytest.raises(SpecError, match="'Q' is not one of"):
        parse_variant("P+Q")


@st.composite
def tables(draw, k_max=6, lanes_max=None):
    """Random operation tables whose one-lane design fits."""
    k = draw(st.integers(2, k_max))
    floats = st.floats(0, 1e7, allow_nan=False)
    cost = np.array([[draw(st.integers(0, 900)) for _ in RESOURCES] for _ in range(k)], dtype=float)
    cost[:, 0] += 1  # every lane takes some LUTs
    need = cost.sum(axis=0)
    scale = draw(st.floats(1.0, 40.0 if lanes_max is None else lanes_max))
    budget = np.floor(need * scale) + np.array([draw(st.integers(0, 500)) for _ in RESOURCES])
    return OpTable(
        names=tuple(f"op{i}" for i in range(k)), units=("u",) * k, lane_kinds=("mac",) * k,
        work=np.array([draw(st.floats(1e2, 1e8)) for _ in range(k)]).round(),
        depth=np.array([draw(st.integers(0, 40)) for _ in range(k)], dtype=float),
        prefetch_bytes=np.array([draw(floats) for _ in range(k)]), spill_bytes=np.array([draw(floats) for _ in range(k)]),
        write_bytes=np.array([draw(floats) for _ in range(k)]), cost=cost, budget=budget, clock_hz=1e8,
        bytes_per_s=draw(st.sampled_from([1e8, 1e9, 1e10])), layers=draw(st.integers(1, 4)),
        stream_bytes=np.array([draw(floats) for _ in range(k)]) if draw(st.booleans()) else None)


SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(t=tables())
def test_no_allocation_exceeds_a_budget(t):
    for method in ("uniform", "slsqp", "slsqp+rebalance"):
        a = allocate(t, method)
        assert min(a.lanes) >= 1
        assert np.all(t.usage(np.array(a.lanes)) <= t.budget + 1e-9), method


@SETTINGS
@given(t=tables(k_max=4, lanes_max=6.0))
def test_rebalanced_slsqp_lies_between_uniform_and_the_optimum(t):
    best, proven, bound = exact(t)
    assert proven and t.fits(best) and bound <= t.seconds(best) * (1 + 1e-9)
    opt = t.seconds(best)
    got = allocate(t, "slsqp+rebalance").seconds
    assert opt <= got * (1 + 1e-12)
    assert got <= allocate(t, "uniform").seconds * (1 + 1e-12)


@settings(max_examples=25, deadline=None)
@given(t=tables(k_max=3, lanes_max=3.0))
def test_milp_optimum_equals_exhaustive_search(t):
    caps = [range(1, int(min(t.budget[j] // t.cost[i, j] for j in range(len(RESOURCES)) if t.cost[i, j] > 0)) + 1)
            for i in range(t.k)]
    brute = min(t.seconds(np.array(n)) for n in itertools.product(*caps) if t.fits(np.array(n)))
    assert t.seconds(exact(t).lanes) == pytest.approx(brute, rel=1e-12)


@SETTINGS
@given(t=tables())
def test_rebalancing_stops_within_the_number_of_operations(t):
    n, masked = rebalance(t, slsqp(t))
    assert len(masked) <= t.k and len(set(masked)) == len(masked)
    free = np.ones(t.k, dtype=bool)
    free[masked] = False
    assert np.all((t.memory_s - t.compute_s(n))[free] <= 0)  # no unmasked operation is left memory-bound
    assert t.fits(n)


def test_stall_is_prefetch_minus_compute_where_positive():
    t = OpTable(names=("a", "b", "c"), units=("u",) * 3, lane_kinds=("mac",) * 3, work=np.array([1000.0, 5000, 300]),
                depth=np.array([9.0, 0, 37]), prefetch_bytes=np.array([1000.0, 2000, 500]),
                spill_bytes=np.array([0.0, 3000, 0]), write_bytes=np.array([0.0, 1000, 0]), cost=np.ones((3, 4)),
                budget=np.full(4, 100.0), clock_hz=1e8, bytes_per_s=1e9, layers=2,
                stream_bytes=np.array([0.0, 9500, 0]))
    tm = t.timing(np.array([10, 5, 3]))
    # compute at 10 ns a cycle: a ceil(1000/10) + 9 = 109 cycles, b 1000 + 0, c 100 + 37 = 137
    assert tm.compute_s == pytest.approx([1.09e-6, 10e-6, 1.37e-6], rel=1e-12)
    # memory at 1 GB/s, while the op computes: its writes, its streamed tiles and the next op's prefetch (c: the next
    # layer's a): a 0 + 0 + 2000 B, b 1000 + 9500 + 500 B, c 0 + 0 + 1000 B
    assert tm.memory_s == pytest.approx([2e-6, 11e-6, 1e-6], rel=1e-12)
    # a waits 2 - 1.09 µs for b's prefetch, b 11 - 10 µs for its stream; c's 1 µs hides behind its 1.37 µs
    assert tm.stall_s[:2] == pytest.approx([0.91e-6, 1e-6], rel=1e-9) and tm.stall_s[2] == 0.0
    # per layer: a 1.09 + 0.91, b 3 µs of spill + 10 + 1, c 1.37: 17.37 µs; two layers 34.74 µs
    assert tm.op_s == pytest.approx([2e-6, 14e-6, 1.37e-6], rel=1e-9)
    assert tm.seconds == pytest.approx(34.74e-6, rel=1e-12)


def test_rebalancing_takes_lanes_from_a_memory_bound_operation():
    # op0 is tiny but must wait 1 ms for op1's prefetch; op1 is large. SLSQP gives op0 lanes it cannot use.
    t = OpTable(names=("a", "b"), units=("u", "u"), lane_kinds=("mac", "mac"), work=np.array([1e6, 1e8]),
                depth=np.zeros(2), prefetch_bytes=np.array([0.0, 1e6]), spill_bytes=np.zeros(2),
                write_bytes=np.zeros(2), cost=np.array([[1.0, 0, 0, 0], [1.0, 0, 0, 0]]),
                budget=np.array([200.0, 1, 1, 1]), clock_hz=1e8, bytes_per_s=1e9)
    first = slsqp(t)
    n, masked = rebalance(t, first)
    assert masked == [0]
    # op0 hides behind 1 ms with ceil(1e6 / 1e5) = 10 lanes; op1 gets the other 190
    assert n.tolist() == [10, 190]
    assert t.seconds(n) < t.seconds(first)
    assert t.seconds(n) == pytest.approx(t.seconds(exact(t).lanes))


def test_infeasible_design_raises_the_search_exception(vcu118, bert):
    t = op_table(bert, 256, vcu118)
    tight = OpTable(**{**t.__dict__, "budget": t.cost.sum(axis=0) - 1})
    for method in ("uniform", "slsqp", "slsqp+rebalance", "exact"):
        with pytest.raises(Infeasible, match="one lane per operation does not fit"):
            allocate(tight, method)


def test_bert_allocation_beats_uniform_and_cross_design_loses(vcu118):
    f4, h4 = load_model("nlpfast-bert-f4x"), load_model("nlpfast-bert-h4x")
    v = parse_variant("MP+ZS")
    tf, th = op_table(f4, 256, vcu118, v), op_table(h4, 256, vcu118, v)
    assert allocate(tf, "slsqp+rebalance").seconds < allocate(tf, "uniform").seconds
    c = cross(tf, th)
    assert 0 < c.relative < 1  # the H-4x design runs F-4x slower than F-4x's own
    assert th.fits(np.array(c.designed.lanes))


def test_energy_adds_static_dynamic_and_dram(vcu118, bert):
    t = op_table(bert, 256, vcu118, parse_variant("MP"))
    n = uniform(t)
    e = energy(t, vcu118, n)
    assert e.static_j == pytest.approx(vcu118.power.static_w * t.seconds(n))
    dsp_cycles = float(np.sum(n * np.ceil(t.work / n) * t.cost[:, RESOURCES.index("dsp")])) * t.layers
    assert e.dsp_j == pytest.approx(dsp_cycles * vcu118.power.dsp_j_per_cycle)
    assert e.joules > e.static_j and e.watts > vcu118.power.static_w


def test_repro_003_prints_every_claim_next_to_the_paper():
    import contextlib
    import io
    import json

    from tstack.cli.core import run

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert run(["repro", "003", "--section", "fpga", "--json", "-"]) == 0
    rows = {r["key"]: r for r in json.loads(out.getvalue())["records"]}
    for key in ("fig16-mp-nlpfast-bert", "fig16-zs-nlpfast-bert", "fig16-all-nlpfast-bert", "fig17a-attention",
                "fig17b-ffn", "fig18-nlpfast-bert-f4x", "f4x-linear-share", "cross-4x", "cross-8x", "cross-16x",
                "exact-gap", "energy-bert", "energy-memnet", "adaptive-total", "fig16-mp-memnet", "fig16-zs-memnet",
                "fig16-all-memnet", "fig17-needed-feed-forward"):
        assert rows[key]["paper"] and rows[key]["tstack"] is not None, key
    assert rows["fig17a-attention"]["paper"] == "-61.8%" and rows["fig17a-attention"]["gap"] is not None
    assert rows["exact-gap"]["tstack"].endswith("of optimal")
    assert rows["energy-memnet"]["tstack"].endswith("×")  # modelled, not "not modelled"

"""The FPGA model's memory network (003 Fig. 2a, Fig. 16) and the baseline's on-chip fit rule (003 Table III)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tstack.costmodel.fpga import Skip, op_table, parse_variant
from tstack.errors import SpecError
from tstack.hardware.fpga import load_fpga
from tstack.models import load_model
from tstack.search.fpga_alloc import allocate


@pytest.fixture(scope="module")
def vcu118():
    return load_fpga("vcu118")


@pytest.fixture(scope="module")
def memnet():
    return load_model("memnet")


def test_memnet_hop_is_the_hand_derivation(vcu118, memnet):
    ns, nq = 1000, 2
    t = op_table(memnet, ns, vcu118, parse_variant("base"), queries=nq)
    assert t.names == ("dot product", "softmax", "weighted sum", "hop update") and t.layers == 3  # 3 hops
    # dot product and weighted sum: nq · ns · d = 2 · 1000 · 64 = 128,000 MACs; softmax nq · ns = 2,000; H·u: nq · d²
    assert t.work.tolist() == [128_000, 2_000, 128_000, 2 * 64 * 64]
    # the baseline reads a whole memory (1000 · 64 · 4 B = 256,000 B) after the previous operation ends, and S or P
    # (2 · 1000 · 4 B = 8,000 B) is written and read back: the weighted sum reads P and M_out exposed
    assert t.spill_bytes.tolist() == [256_000, 8_000, 264_000, 0]
    tm = t.timing(np.full(4, 100))
    # dot product with 100 lanes: 1,280 cycles + 9 stages = 12.89 µs, after its 256,000 B read at 12.8 GB/s = 20 µs
    assert tm.op_s[0] == pytest.approx(20e-6 + 1_289 / 1e8, rel=1e-12)


def test_column_based_memnet_keeps_scores_on_chip_and_streams_the_memories(vcu118, memnet):
    ns, nq = 10_000, 4
    base = op_table(memnet, ns, vcu118, parse_variant("base"), queries=nq)
    c = op_table(memnet, ns, vcu118, parse_variant("C"), queries=nq)
    # C removes S's and P's write and read-back: 4 × nq · ns · 4 B = 640,000 B per hop, nothing else
    assert base.dram_bytes - c.dram_bytes == pytest.approx(4 * nq * ns * 4)
    assert c.spill_bytes.sum() == 0 and c.streamed.tolist() == [ns * 64 * 4, 0, ns * 64 * 4, 0]
    # P and F have nothing to partition in a one-head network without a feed-forward network
    mp = op_table(memnet, ns, vcu118, parse_variant("MP"), queries=nq)
    assert mp.dram_bytes == c.dram_bytes and np.array_equal(mp.work, c.work)
    n = allocate(c, "uniform").lanes
    assert base.seconds(n) > c.seconds(n)  # exposed reads and spills cost time; streaming overlaps
    zs = op_table(memnet, ns, vcu118, parse_variant("MP+ZS"), Skip(0.5, 0.0), queries=nq)
    assert zs.work[1] == pytest.approx(0.5 * mp.work[1]) and zs.work[2] == pytest.approx(0.5 * mp.work[2])


def test_memnet_at_003s_size_is_memory_bound(vcu118, memnet):
    # 10^8 slots × 64 × 4 B = 25.6 GB per memory, two per hop, at 12.8 GB/s: 4 s a hop however many lanes
    t = op_table(memnet, memnet.default_seq, vcu118, parse_variant("MP+ZS"))
    best = allocate(t, "slsqp+rebalance")
    assert best.seconds >= 3 * 2 * 25.6e9 / 12.8e9
    assert np.all(t.usage(np.array(best.lanes)) <= t.budget + 1e-9)


def test_bad_query_count_names_the_field(vcu118, memnet):
    with pytest.raises(SpecError, match="queries=0"):
        op_table(memnet, 100, vcu118, queries=0)


def test_bert_base_working_sets_fit_the_vcu118_so_the_baseline_prefetches(vcu118):
    # Largest baseline working set: linear trans-1, Z (256·1024·4 B = 1 MiB) + W1 (1024·4096·4 B = 16 MiB) + T1
    # (256·4096·4 B = 4 MiB) = 21 MiB; twice that (double-buffered) is 44,040,192 B < 45,342,720 B of BRAM + URAM
    bert = load_model("nlpfast-bert")
    base = op_table(bert, 256, vcu118, parse_variant("base"))
    mp = op_table(bert, 256, vcu118, parse_variant("MP"))
    assert np.array_equal(base.prefetch_bytes, mp.prefetch_bytes)
    # at F-4x W1 alone is 64 MiB: the baseline's linear transformations cannot be prefetched, F's column chunks can
    f4 = load_model("nlpfast-bert-f4x")
    base4 = op_table(f4, 256, vcu118, parse_variant("base"))
    f = op_table(f4, 256, vcu118, parse_variant("F"))
    lin1 = base4.names.index("linear trans-1")
    assert base4.prefetch_bytes[lin1] == 0 and f.prefetch_bytes[lin1] == 1024 * 16384 * 4 + 256 * 1024 * 4


@settings(max_examples=25, deadline=None)
@given(uram=st.integers(0, 4000), bram=st.integers(60, 4000), variant=st.sampled_from(["base", "P", "P+C", "F", "MP"]))
def test_the_fit_rule_moves_reads_between_prefetch_and_exposed_and_never_drops_them(vcu118, uram, bram, variant):
    bert = load_model("nlpfast-bert")
    board = replace(vcu118, uram_blocks=uram, bram36_blocks=bram)
    t = op_table(bert, 256, board, parse_variant(variant))
    roomy = op_table(bert, 256, replace(vcu118, uram_blocks=10**6), parse_variant(variant))
    assert t.prefetch_bytes.sum() + t.spill_bytes.sum() == pytest.approx(roomy.prefetch_bytes.sum()
                                                                        + roomy.spill_bytes.sum())
    assert t.dram_bytes == pytest.approx(roomy.dram_bytes)
    assert np.all(t.prefetch_bytes <= roomy.prefetch_bytes)  # less room never prefetches more

"""Fusion profiles on the accelerator backend (`analyze --device gemmini-* --fusion P`): what each fused kind costs
on Gemmini, against the unfused ops and against hand derivations from the accelerator's own pieces."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tstack.accel import nonlinear as nl
from tstack.accel.fusion import pair_cost
from tstack.accel.mapping import mapper
from tstack.accel.timing import GemmShape, transfer_cycles
from tstack.api import analyze
from tstack.cli.core import run as cli
from tstack.costmodel.systolic import cost_ops, members, nl_name
from tstack.hardware.accel import load_accel
from tstack.models import load_model
from tstack.spec import RunSpec
from tstack.workload.build import build
from tstack.workload.fusion import fuse

PROFILES = ("none", "apex", "inductor", "flash")
ACCELS = ("gemmini-ibert", "gemmini-baseline", "gemmini-transformer")
IBERT, BASELINE = load_accel("gemmini-ibert"), load_accel("gemmini-baseline")
SEQ = 512  # 000's sequence length; whole softmax rows of 512 int32 values fit I-BERT's accumulator
OPS = build(load_model("bert-base"), RunSpec(seq=SEQ, precision="int8", mode="infer", batch=1))
AUTO = mapper("auto")


def seconds(hw, ops, name: str, schedule: str = "non-fused") -> float:
    """Seconds of one instance of every op of layer L0 (and the embedding) whose name is ``name``, summed."""
    return sum(r.seconds for r in cost_ops(hw, ops, schedule)
               if r.op.name == name and r.op.label("layer") in ("L0", "-"))


@pytest.mark.parametrize("hw", ACCELS)
def test_every_profile_costs_on_every_accelerator_with_flops_unchanged(hw):
    base = analyze("bert-base", device=hw, seq=128)
    for p in PROFILES:
        b = analyze("bert-base", device=hw, seq=128, fusion=p)
        assert b.total.flops == base.total.flops
        assert b.total.seconds > 0 and b.total.joules > 0
    assert analyze("bert-base", device=hw, seq=128, fusion="none").total == base.total


def test_chain_members_and_anchor():
    fused = fuse(OPS, "inductor")
    rl = next(o for o in fused if o.name == "fused.residual-layernorm")
    sm = next(o for o in fused if o.name == "fused.scale-mask-softmax")
    emb = next(o for o in fused if o.name == "fused.embedding-sum-layernorm")
    assert members(rl) == ("residual", "layernorm") and nl_name(rl) == "layernorm" and nl.side_count(members(rl)) == 1
    assert nl_name(sm) == "softmax" and nl.side_count(members(sm)) == 0
    assert nl.side_count(members(emb)) == 2  # the position and token-type embeddings added to the word embeddings


def test_ibert_chains_hand_derived_and_cheaper():
    fused = fuse(OPS, "inductor")
    # scale and mask already fold into I-BERT's softmax (requantization factor, an add of the exp pass): equal
    assert seconds(IBERT, fused, "fused.scale-mask-softmax") == pytest.approx(seconds(IBERT, OPS, "softmax"), rel=1e-12)
    # residual + LayerNorm: the LayerNorm moving its int32 rows in plus the skip operand (int8, 512×768 = 384 KiB)
    # mvin-accumulated into the same rows, read from DRAM as (1 + 1)·384 KiB > the 512 KiB L2 (the resadd's rule);
    # the resadd's three transfers are gone
    rows, cols = SEQ, 768
    ln = nl.standalone_cost(IBERT, "layernorm", rows, cols)
    side = transfer_cycles(IBERT, rows, cols, hit=False)
    blocks = rows // IBERT.dim
    units = nl.unit_cycles(IBERT, "layernorm", rows, cols)
    dma = (transfer_cycles(IBERT, rows, 4 * cols, 4 * rows * cols <= IBERT.l2.bytes)
           + transfer_cycles(IBERT, rows, cols, hit=True) + side)
    hand = max(units, dma) + min(units, dma) / blocks  # two row blocks fit the accumulator: moves overlap the units
    one = seconds(IBERT, fused, "fused.residual-layernorm") / 2  # two per layer
    assert one == pytest.approx(IBERT.seconds(hand), rel=1e-12)
    assert one < seconds(IBERT, OPS, "residual") / 2 + ln.seconds
    emb = seconds(IBERT, fused, "fused.embedding-sum-layernorm")
    assert emb < seconds(IBERT, OPS, "embedding-sum") + ln.seconds


def test_qkv_group_is_one_gemm_through_the_mapping():
    fused = fuse(OPS, "inductor")
    name = "fused.attn.q_proj+attn.k_proj+attn.v_proj"
    _, t = AUTO(IBERT, GemmShape(I=SEQ, J=3 * 768, K=768), False, 1)
    assert seconds(IBERT, fused, name) == pytest.approx(IBERT.seconds(t.cycles), rel=1e-12)
    three = sum(seconds(IBERT, OPS, f"attn.{x}_proj") for x in "qkv")
    # Mesh-bound on I-BERT: reading the input once saves no time, and auto's 176-wide column tiles leave a 16-wide
    # remainder of 2304 (13·176 + 16) whose tiles are DMA-bound: 3,631,659 cycles against 3 × 1,193,707 (+1.4%)
    assert seconds(IBERT, fused, name) > three
    # on the baseline (256 KiB scratchpad) the one GEMM is faster
    assert seconds(BASELINE, fuse(OPS, "inductor"), name) < sum(seconds(BASELINE, OPS, f"attn.{x}_proj") for x in "qkv")


def test_flash_on_ibert_is_the_fused_score_softmax_pair_plus_context():
    fused = fuse(OPS, "flash")
    heads, d = 12, 64
    pc = pair_cost(IBERT, GemmShape(I=SEQ, J=SEQ, K=d, batch=heads), "softmax", "fused", AUTO)
    _, ct = AUTO(IBERT, GemmShape(I=SEQ, J=d, K=SEQ, batch=heads), False, 1)
    flash = seconds(IBERT, fused, "attn.sdpa")
    assert flash == pytest.approx(pc.seconds + IBERT.seconds(ct.cycles), rel=1e-12)
    unfused = sum(seconds(IBERT, OPS, n) for n in ("attn.score", "scale", "mask", "softmax", "attn.context"))
    assert flash < 0.8 * unfused  # the int32 scores never leave the accumulator (000 Fig. 3: −70% for QKᵀ+softmax)
    # and in joules: the 12·512·512·4 B score round trip through DRAM is gone
    e = {p: analyze("bert-base", device="gemmini-ibert", seq=SEQ, fusion=p).total.joules for p in ("inductor", "flash")}
    assert e["flash"] < e["inductor"]


def test_host_nonlinear_fusion_hand_derived():
    fused = fuse(OPS, "flash")
    # the host cannot keep scores on the accelerator: flash runs as its parts, at the unfused sequence's cost
    parts = sum(seconds(BASELINE, OPS, n) for n in ("attn.score", "scale", "mask", "softmax", "attn.context"))
    assert seconds(BASELINE, fused, "attn.sdpa") == pytest.approx(parts, rel=1e-12)
    assert seconds(BASELINE, fused, "fused.scale-mask-softmax") == 0.0  # absorbed by flash
    # residual + LayerNorm in the host's fp32 loop: per element a load, an add and a dequantization (2 + 2 ops at
    # 1 cycle) and one more int8 byte at 1.6 GB/s: 512·768·(4 ns + 0.625 ns) = 1.8186 ms more than the LayerNorm
    n = SEQ * 768
    ln = nl.host_cost(BASELINE, "layernorm", SEQ, 768).seconds
    one = seconds(BASELINE, fused, "fused.residual-layernorm") / 2
    assert one - ln == pytest.approx(n * 4e-9 + n / 1.6e9, rel=1e-12)
    assert one - ln == pytest.approx(1.8186e-3, rel=1e-4)
    # the resadd it replaces ran on the accelerator's DMA (134 µs): fused on the host is slower, as the physics says
    assert one > ln + seconds(BASELINE, OPS, "residual") / 2


def test_fused_schedule_with_fused_chains():
    plain = sum(r.seconds * r.count for r in cost_ops(IBERT, OPS, "fused"))
    chained = sum(r.seconds * r.count for r in cost_ops(IBERT, fuse(OPS, "inductor"), "fused"))
    assert chained < plain


def test_analyze_cli_fusion_on_an_accelerator(capsys):
    import json
    assert cli(["analyze", "bert-base", "--seq", "128", "--device", "gemmini-ibert", "--fusion", "flash",
                "--json", "-"]) == 0
    doc = json.loads(capsys.readouterr().out)
    flash = [r for r in doc["records"] if r.get("fusion") == "flash-attention"]
    assert {r["accel"] for r in flash} == {"matmul", "softmax"} and all(r["joules"] > 0 for r in flash)


def test_fuse_command_compares_profiles_on_an_accelerator(capsys):
    import json
    assert cli(["fuse", "bert-base", "--mode", "infer", "--seq", "128", "--device", "gemmini-ibert",
                "--fusion", "none,flash", "--json", "-"]) == 0
    rows = {(r["profile"], r["group"]): r for r in json.loads(capsys.readouterr().out)["records"]}
    assert rows[("flash", "total")]["speedup"] > 1
    assert cli(["fuse", "bert-base", "--device", "gemmini-ibert"]) == 2  # a training run
    assert "--mode" in capsys.readouterr().err


@settings(max_examples=8, deadline=None)
@given(seq=st.integers(1, 32).map(lambda k: 16 * k), hw=st.sampled_from(ACCELS))
def test_flops_kept_and_fused_attention_and_chains_never_cost_more_on_units(seq, hw):
    ops = build(load_model("bert-base"), RunSpec(seq=seq, precision="int8", mode="infer", batch=1))
    acc = load_accel(hw)
    plain = cost_ops(acc, ops)
    flash = cost_ops(acc, fuse(ops, "flash", hw))
    assert sum(r.op.flops * r.count for r in flash) == sum(r.op.flops * r.count for r in plain)
    attn = ("attn.score", "scale", "mask", "softmax", "attn.context")
    unfused = sum(r.seconds * r.count for r in plain if r.op.name in attn)
    fused = sum(r.seconds * r.count for r in flash if r.op.label("fusion") == "flash-attention")
    if acc.units.nonlinear == "accelerator":  # I-BERT: scores stay in the accumulator; chains drop transfers
        assert fused <= unfused * (1 + 1e-12)
        chains = ("residual", "layernorm", "embedding-sum")
        assert (sum(r.seconds * r.count for r in flash if r.op.name.startswith("fused.") and nl_name(r.op) != r.op.name)
                <= sum(r.seconds * r.count for r in plain if r.op.name in chains) * (1 + 1e-12))
    else:  # the host cannot fuse the attention: its parts, unchanged
        assert fused == pytest.approx(unfused, rel=1e-12)

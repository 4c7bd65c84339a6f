"""The multi-device model: collectives against their hand formulas, one device against `analyze`, Megatron's slicing
against 002 Fig. 10, the pipeline bubble and the memory per stage against hand derivations."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tstack.api import analyze
from tstack.costmodel import cluster as C
from tstack.errors import SpecError
from tstack.hardware.device import load_device
from tstack.hardware.network import (
    Level,
    NetworkSpec,
    collective_seconds,
    load_network,
    network_presets,
    volume_factor,
)
from tstack.models import load_model
from tstack.spec import RunSpec
from tstack.workload import params as P
from tstack.workload.build import build
from tstack.workload.fusion import sdpa

V100, A100 = load_device("v100"), load_device("a100-80gb")
PCIE, DGX = load_network("pcie4"), load_network("dgx-a100")


# ---------------------------------------------------------------- networks and collectives

def test_presets_load_with_sources():
    assert {"pcie4", "dgx-v100", "dgx-a100", "dgx-h100"} <= set(network_presets())
    for name in network_presets():
        net = load_network(name)
        assert net.sources and net.levels[-1].size == 0


@given(n=st.integers(2, 4096))
def test_volume_factors_are_the_hand_formulas(n):
    assert volume_factor("all-reduce", n) == pytest.approx(2 * (n - 1) / n)
    assert volume_factor("reduce-scatter", n) == pytest.approx((n - 1) / n)
    assert volume_factor("all-gather", n) == pytest.approx((n - 1) / n)
    assert volume_factor("all-reduce", n, "tree") == 2.0
    # a reduce-scatter then an all-gather move what one all-reduce moves (sequence parallelism's premise)
    assert volume_factor("reduce-scatter", n) + volume_factor("all-gather", n) == pytest.approx(volume_factor("all-reduce", n))


def test_ring_all_reduce_on_pcie4_is_the_hand_formula():
    # 128 GPUs, 1 GB: 2·127 steps of 5 µs + 2·127/128 · 1e9 B / (31.5e9 B/s · 0.914)
    hand = 2 * 127 * 5e-6 + 2 * 127 / 128 * 1e9 / (31.5e9 * 0.914)
    assert collective_seconds(PCIE, "all-reduce", 1e9, 128) == pytest.approx(hand)
    hand_rs = 127 * 5e-6 + 127 / 128 * 1e9 / (31.5e9 * 0.914)
    assert collective_seconds(PCIE, "reduce-scatter", 1e9, 128) == pytest.approx(hand_rs)


def test_hierarchical_all_reduce_is_three_rings():
    # 16 GPUs on 2 DGX A100 nodes: reduce-scatter over 8 on NVSwitch, all-reduce of 1/8 over 2 on InfiniBand,
    # all-gather over 8 on NVSwitch.
    nv, ib = 300e9 * 0.8, 25e9 * 0.9
    b = 8e8
    hand = (7 * 5e-6 + 7 / 8 * b / nv) + (2 * 7e-6 + 2 * 1 / 2 * (b / 8) / ib) + (7 * 5e-6 + 7 / 8 * b / nv)
    assert collective_seconds(DGX, "all-reduce", b, 16) == pytest.approx(hand)
    # the same group as one flat ring runs at the InfiniBand rate
    flat = 30 * 7e-6 + 2 * 15 / 16 * b / ib
    assert collective_seconds(DGX, "all-reduce", b, 16, algorithm="ring") == pytest.approx(flat)
    # a group with one rank per node (stride 8) only uses InfiniBand
    assert collective_seconds(DGX, "all-reduce", b, 4, stride=8) == pytest.approx(6 * 7e-6 + 1.5 * b / ib)


def test_tree_all_reduce_latency_is_logarithmic():
    net = NetworkSpec("flat", (Level("link", 0, 1e10, 1e-5, 1.0),), algorithm="tree")
    assert collective_seconds(net, "all-reduce", 1e6, 64) == pytest.approx(2 * 6 * 1e-5 + 2 * 1e6 / 1e10)


def test_bad_network_names_the_field():
    with pytest.raises(SpecError, match="efficiency"):
        Level("x", 0, 1e10, 1e-6, 1.5)
    with pytest.raises(SpecError, match="size 0"):
        NetworkSpec("x", (Level("x", 8, 1e10, 1e-6, 0.5),))


# ---------------------------------------------------------------- one device is `analyze`

@pytest.mark.parametrize("model,precision,optimizer", [("bert-large", "fp32", "lamb"), ("gpt2", "fp16-mixed", "adam"),
                                                       ("llama-70b", "bf16-mixed", "adam"), ("memnet", "fp32", "sgd")])
@pytest.mark.parametrize("overlap", ["none", "layer"])
@pytest.mark.parametrize("zero", [0, 3])
def test_one_device_equals_analyze(model, precision, optimizer, overlap, zero):
    spec = load_model(model)
    run = RunSpec(mode="train", batch=2, seq=64, precision=precision, optimizer=optimizer)
    r = C.evaluate(spec, run, A100, DGX, C.Layout(micro_batch=2, zero=zero, overlap=overlap))
    assert r.seconds == pytest.approx(analyze(spec, run, A100).total.seconds, rel=1e-12)
    assert sum(x["seconds"] for x in r.records()) == pytest.approx(r.seconds, rel=1e-12)


@pytest.mark.parametrize("model,precision,optimizer", [("bert-large", "fp32", "lamb"), ("gpt2", "fp16-mixed", "adam")])
@pytest.mark.parametrize("fusion", ["apex", "inductor", "flash"])
def test_one_device_with_a_fusion_profile_equals_analyze_with_it(model, precision, optimizer, fusion):
    spec = load_model(model)
    run = RunSpec(mode="train", batch=2, seq=64, precision=precision, optimizer=optimizer)
    r = C.evaluate(spec, run, A100, DGX, C.Layout(micro_batch=2), fusion=fusion)
    fused = analyze(spec, run, A100, fusion=fusion).total.seconds
    assert r.seconds == pytest.approx(fused, rel=1e-12)
    assert fused < analyze(spec, run, A100).total.seconds
    assert sum(x["seconds"] for x in r.records()) == pytest.approx(r.seconds, rel=1e-12)


def test_fusion_applies_to_each_sliced_rank_and_flash_drops_the_score_activations():
    spec, run = load_model("gpt2"), RunSpec(mode="train", batch=1, seq=512, precision="fp16-mixed", optimizer="adam")
    lay = C.Layout(dp=2, tp=2, pp=2, micro_batch=1, global_batch=8)
    plain, flash = C.evaluate(spec, run, A100, DGX, lay), C.evaluate(spec, run, A100, DGX, lay, fusion="flash")
    assert flash.family.layer_fwd < plain.family.layer_fwd and flash.seconds < plain.seconds
    ops = C.family_ops(spec, run, 2, 1, "none", False, fusion="flash", device="a100")
    attn = [o for o in ops if o.label("fusion") == "flash-attention" and o.label("pass") == "fwd"]
    assert attn and all(o.dim("batch") == spec.heads // 2 for o in attn)  # the rank's heads
    # Korthikanti's 5·a·s/h attention term (score, softmax, dropout mask) is replaced by one fp32 log-sum-exp per
    # query and head: per layer s·b·h·5·a·s/h/tp · 2 B / 2 − s·b·a·4/tp = 512·12·(5·512 − 4)/2 bytes fewer
    a, s_ = spec.heads, run.seq
    drop = s_ * spec.hidden * 5 * a * s_ / spec.hidden / 2 * 2 / 2 - s_ * a * 4 / 2
    assert plain.family.act_layer_bytes - flash.family.act_layer_bytes == pytest.approx(drop, rel=1e-12)
    assert drop == pytest.approx(512 * 12 * (5 * 512 - 4) / 2)
    # a multi-tensor optimizer kernel's time is split over layers and embedding by parameters: totals kept
    fam = C.family(spec, run, A100, 1, 1, "none", False, fusion="apex")
    opt = analyze(spec, run.replace(batch=1), A100, fusion="apex").group_by("part")["optimizer"].seconds
    assert fam.opt_layer * fam.layers + fam.opt_rest == pytest.approx(opt, rel=1e-12)


def test_cluster_cli_takes_a_fusion_profile(capsys):
    import json

    from tstack.cli.core import run as cli
    assert cli(["cluster", "gpt2", "--seq", "128", "--fusion", "flash", "--json", "-"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["run"]["fusion"] == "flash"
    assert cli(["cluster", "gpt2", "--fusion", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


def test_full_recompute_on_one_device_is_checkpointing_every_layer():
    spec, run = load_model("gpt2"), RunSpec(mode="train", batch=1, seq=128, precision="fp16-mixed", optimizer="adam")
    r = C.evaluate(spec, run, A100, DGX, C.Layout(recompute="full"))
    assert r.seconds == pytest.approx(analyze(spec, run.replace(checkpoint="every-1"), A100).total.seconds, rel=1e-12)


def test_gradient_accumulation_repeats_forward_and_backward_only():
    spec, run = load_model("bert-base"), RunSpec(mode="train", batch=4, seq=64)
    b = analyze(spec, run, A100)
    opt = b.group_by("part")["optimizer"].seconds
    r = C.evaluate(spec, run, A100, DGX, C.Layout(micro_batch=4, global_batch=12))
    assert r.seconds == pytest.approx(3 * (b.total.seconds - opt) + opt, rel=1e-12)


# ---------------------------------------------------------------- tensor slicing (002 Fig. 10)

def _fwd(ops, name):
    return next(op for op in ops if op.name == name and op.label("pass") == "fwd")


@pytest.mark.parametrize("m", [2, 4, 8])
def test_tensor_slicing_shapes_are_fig10(m):
    spec, run = load_model("bert-large"), RunSpec(mode="train", batch=2, seq=128)
    H, Fd, h, T = spec.hidden, spec.ffn, spec.heads, 2 * 128
    ops = C.slice_workload(build(spec, run, collapse=True), m)
    # Fig. 10(b): FC-1 is split by columns (F/m outputs), GeLU runs on T × F/m, FC-2 by rows (K = F/m); the
    # LayerNorm after FC-2's all-reduce is replicated on T × H.
    assert _fwd(ops, "ffn.fc1").gemm_shape == (Fd // m, T, H, 1)
    assert _fwd(ops, "ffn.fc2").gemm_shape == (H, T, Fd // m, 1)
    gelu = _fwd(ops, "bias-gelu")
    assert (gelu.dim("rows"), gelu.dim("cols")) == (T, Fd // m)
    ln = next(op for op in ops if op.name == "layernorm" and op.label("part") == "transformer")
    assert (ln.dim("rows"), ln.dim("cols")) == (T, H)
    # attention: Q/K/V split by columns, the output projection by rows, the heads across ranks
    assert _fwd(ops, "attn.q_proj").gemm_shape == (H // m, T, H, 1)
    assert _fwd(ops, "attn.out_proj").gemm_shape == (H, T, H // m, 1)
    assert _fwd(ops, "attn.score").gemm_shape[3] == 2 * h // m
    # backward GEMMs follow 002 Table 2b from the sliced forward: FC-1's grad-act is H × T × F/m
    bwd = next(op for op in ops if op.name == "ffn.fc1" and op.label("pass") == "bwd-act")
    assert bwd.gemm_shape == (H, T, Fd // m, 1)


@given(m=st.sampled_from([1, 2, 4, 8, 16]))
@settings(max_examples=10, deadline=None)
def test_layer_gemm_flops_split_exactly(m):
    spec, run = load_model("bert-large"), RunSpec(mode="train", batch=1, seq=128)
    ops = build(spec, run, collapse=True)
    layer = [op for op in ops if op.is_gemm and op.label("part") == "transformer"]
    sliced = [op for op in C.slice_workload(ops, m) if op.is_gemm and op.label("part") == "transformer"]
    assert sum(op.flops * op.count for op in sliced) * m == sum(op.flops * op.count for op in layer)


@given(name=st.sampled_from(["bert-large", "gpt2", "llama-70b", "transformer-base", "megatron-22b"]))
@settings(max_examples=5, deadline=None)
def test_layer_params_at_tp1_are_the_workload_counts(name):
    spec = load_model(name)
    assert C.layer_params_tp(spec, 1) == P.layer_params(spec)
    assert C.embedding_params_tp(spec, 1) == P.embedding_params(spec)
    assert C.head_params_tp(spec, 1) == P.head_params(spec)


def test_layer_params_split_megatron_style():
    spec = load_model("megatron-22b")  # h = 6144, F = 4h, biases: q/k/v and fc1 split; out, fc2 and norms whole
    h = spec.hidden
    split = 4 * h * h + 3 * h + 8 * h * h + 4 * h
    assert C.layer_params_tp(spec, 8) == split // 8 + 2 * h + 2 * 2 * h


# ---------------------------------------------------------------- pipeline bubble and memory: hand derivations

def test_pipeline_bubble_is_p_minus_1_over_v_m():
    spec, run = load_model("megatron-22b"), RunSpec(mode="train", seq=2048, precision="fp16-mixed", optimizer="adam")
    for pp, v, m in ((4, 1, 8), (4, 3, 8), (8, 2, 16)):
        r = C.evaluate(spec, run, A100, DGX, C.Layout(tp=8, pp=pp, interleave=v, global_batch=m))
        steady = r.values["compute"] + r.values["tp_comm"] + r.values["p2p"]
        assert r.values["bubble"] == pytest.approx(steady * (pp - 1) / (v * m))
        assert r.summary()["bubble_fraction"] == pytest.approx((pp - 1) / (v * m))


def test_stage_time_hand_derivation():
    spec, run = load_model("megatron-22b"), RunSpec(mode="train", seq=2048, precision="fp16-mixed", optimizer="adam")
    lay = C.Layout(tp=8, pp=4, global_batch=8)
    r = C.evaluate(spec, run, A100, DGX, lay)
    f = r.family
    per = 48 // 4
    first = per * (f.layer_fwd + f.layer_bwd) + f.emb_fwd + f.emb_bwd
    last = per * (f.layer_fwd + f.layer_bwd) + f.head_fwd + f.head_bwd
    stage = max(first, last)
    assert r.values["compute"] == pytest.approx(8 * stage)
    # 2 all-reduces forward and 2 backward per layer of b·s·h fp16 bytes over 8 NVSwitch ranks, and one for the
    # embedding or the head
    ar = collective_seconds(DGX, "all-reduce", 2048 * 6144 * 2, 8)
    assert r.values["tp_comm"] == pytest.approx(8 * ar * (4 * per + 1))
    # p2p: forward activation and backward gradient, b·s·h/t bytes each, between nodes (stride tp·dp = 8)
    p2p = collective_seconds(DGX, "p2p", 2048 * 6144 * 2 / 8, 2, 8)
    assert r.values["p2p"] == pytest.approx(8 * 2 * p2p)


def test_activation_memory_is_korthikanti():
    spec = load_model("gpt3-175b")  # a = 96, h = 12288, s = 2048, b = 1, t = 8, fp16
    s, b, h, a, t = 2048, 1, 12288, 96, 8
    act = lambda sp, rc: C.activation_bytes_per_layer(spec, s, b, t, sp, rc, 2)  # noqa: E731
    assert act(False, "none") == pytest.approx(s * b * h * (10 + 24 / t + 5 * a * s / (h * t)))
    assert act(True, "none") == pytest.approx(s * b * h / t * (34 + 5 * a * s / h))
    assert act(True, "selective") == pytest.approx(s * b * h / t * 34)
    assert act(False, "full") == pytest.approx(2 * s * b * h)
    assert C.activation_bytes_per_layer(spec, s, b, 1, False, "none", 2) == pytest.approx(s * b * h * (34 + 5 * a * s / h))


def test_memory_per_stage_hand_derivation():
    spec = load_model("gpt3-175b")
    run = RunSpec(mode="train", seq=2048, precision="fp16-mixed", optimizer="adam")
    lay = C.Layout(tp=8, pp=8, interleave=3, global_batch=64, recompute="selective", seq_parallel=True)
    r = C.evaluate(spec, run, A100, DGX, lay)
    per_layer = C.layer_params_tp(spec, 8)
    first = 12 * per_layer + C.embedding_params_tp(spec, 8)
    last = 12 * per_layer + math.ceil(51200 / 8) * 12288 + C.head_params_tp(spec, 8)  # the tied word table too
    params = max(first, last)
    mem = r.memory()
    assert mem["weights"] == pytest.approx(2 * params)
    assert mem["gradients"] == pytest.approx(2 * params)
    assert mem["optimizer"] == pytest.approx(12 * params)
    # the first stage holds p = 8 micro-batches of its 12 layers, × (1 + (p − 1)/(p·v)) interleaved
    act_layer = 2048 * 12288 / 8 * 34
    assert mem["activations"] == pytest.approx(12 * act_layer * 8 * (1 + 7 / 24))
    assert r.fits
    zero = C.evaluate(spec, run, A100, DGX, C.Layout(dp=4, tp=8, pp=8, interleave=3, global_batch=64,
                                                     recompute="selective", seq_parallel=True, zero=3))
    assert zero.memory()["optimizer"] == pytest.approx(12 * params / 4)
    assert zero.memory()["weights"] == pytest.approx(2 * params / 4)


def test_overflowing_layout_is_reported_not_fitting():
    spec, run = load_model("gpt3-175b"), RunSpec(mode="train", seq=2048, precision="fp16-mixed", optimizer="adam")
    r = C.evaluate(spec, run, A100, DGX, C.Layout(tp=8))
    assert not r.fits and r.summary()["memory_bytes_per_device"]["total"] > A100.memory_capacity


def test_data_parallel_overlap_hides_all_but_the_last_layer():
    spec, run = load_model("bert-large"), RunSpec(mode="train", seq=128)
    lay = C.Layout(dp=128, micro_batch=16)
    none = C.evaluate(spec, run, V100, PCIE, C.Layout(dp=128, micro_batch=16, overlap="none"))
    layer = C.evaluate(spec, run, V100, PCIE, lay)
    f = layer.family
    grad = lambda p: collective_seconds(PCIE, "all-reduce", 4 * p, 128)  # noqa: E731
    assert none.values["dp_grad"] == pytest.approx(grad(f.params_head) + 24 * grad(f.params_layer) + grad(f.params_emb))
    assert layer.values["dp_grad"] < 0.2 * none.values["dp_grad"]
    assert layer.values["dp_grad"] >= grad(f.params_emb)  # the first layer's gradients cannot hide
    # exactly (002 §5.1, pp = 1 so the head and embedding are on this rank): b_head + max(b, g_head)
    # + 23·max(b, g_layer) + max(b_emb, g_layer) + g_emb, less the backward compute b_head + 24·b + b_emb
    b, b_emb = f.layer_bwd, f.emb_bwd
    g_head, g_layer, g_emb = grad(f.params_head), grad(f.params_layer), grad(f.params_emb)
    exposed = max(b, g_head) + 23 * max(b, g_layer) + max(b_emb, g_layer) + g_emb - 24 * b - b_emb
    assert layer.values["dp_grad"] == pytest.approx(exposed)


def test_illegal_layouts_name_the_field():
    spec, run = load_model("bert-large"), RunSpec(mode="train", seq=128)
    with pytest.raises(SpecError, match="tp=3 must divide heads=16"):
        C.evaluate(spec, run, V100, PCIE, C.Layout(tp=3))
    with pytest.raises(SpecError, match="pp=5 must divide"):
        C.evaluate(spec, run, V100, PCIE, C.Layout(pp=5))
    with pytest.raises(SpecError, match="global_batch=3"):
        C.evaluate(spec, run, V100, PCIE, C.Layout(dp=2, global_batch=3))


# ---------------------------------------------------------------- mixture of experts, expert parallelism

MIXTRAL = load_model("mixtral-tiny")  # 4 layers, h 256, 8 heads / 2 KV heads, 8 experts of F 512, top-2, vocab 32000


@pytest.mark.parametrize("shared", [0, 256])
@pytest.mark.parametrize("recompute", ["none", "full"])
def test_moe_on_one_device_equals_analyze(shared, recompute):
    spec = MIXTRAL.replace(shared_expert_ffn=shared)  # Qwen2-MoE's shared expert with 256
    run = RunSpec(mode="train", batch=2, seq=64, precision="bf16-mixed", optimizer="adam")
    r = C.evaluate(spec, run, A100, DGX, C.Layout(micro_batch=2, recompute=recompute))
    checkpoint = "every-1" if recompute == "full" else "none"
    assert r.seconds == pytest.approx(analyze(spec, run.replace(checkpoint=checkpoint), A100).total.seconds, rel=1e-12)
    assert r.values["ep_a2a"] == 0.0  # one device: no all-to-all
    # the router GEMM is the workload's: E × T × h, costed with the rest
    assert any(op.name == "moe.router" and op.gemm_shape == (8, 128, 256, 1)
               for op in C.family_ops(spec, run, 1, 2, "none", False))


def test_expert_parallel_rank_runs_its_experts_at_ep_times_the_tokens():
    run = RunSpec(mode="train", batch=2, seq=64)  # T = 128 tokens, T·k = 256 assignments on every rank
    ops = build(MIXTRAL, run, collapse=True)
    for ep in (2, 4, 8):
        sliced = C.slice_workload(ops, 1, model=MIXTRAL, ep=ep)
        gate = [op for op in sliced if op.name == "moe.expert.gate_proj" and op.label("pass") == "fwd"]
        # 8/ep experts per rank (× 4 layers), each on 256·ep/8 tokens
        assert [(op.gemm_shape, op.count) for op in gate] == [((512, 256 * ep // 8, 256, 1), 8 // ep * 4)]
        # the rank's expert FLOPs are the whole's (the same T·k assignments), the router and combine untouched
        def flops(workload, group):
            return sum(op.flops * op.count for op in workload if op.label("group") == group)
        for group in ("FC GEMM", "SiLU", "Router", "MoE combine"):
            assert flops(sliced, group) == flops(ops, group)


@given(tokens=st.integers(1, 40), ep=st.sampled_from([1, 2, 4, 8]), tp=st.sampled_from([1, 2]),
       shared=st.sampled_from([0, 128]), checkpoint=st.sampled_from(["none", "every-1"]))
@settings(max_examples=20, deadline=None)
def test_uneven_routing_keeps_every_assignment(tokens, ep, tp, shared, checkpoint):
    # T·k not a multiple of the experts: the workload runs two expert groups (q + 1 and q tokens); a rank's groups
    # hold T·k assignments over its 8/ep experts, and tensor slicing splits each expert's GEMMs exactly by tp; a
    # shared expert and a recomputed forward are told apart from the routed experts
    spec = MIXTRAL.replace(shared_expert_ffn=shared)
    run = RunSpec(mode="train", batch=1, seq=tokens, checkpoint=checkpoint)
    ops = build(spec, run, collapse=True)
    sliced = C.slice_workload(ops, tp, model=spec, ep=ep)
    act = [sum(op.flops * op.count for op in w if op.label("group") == "SiLU") for w in (sliced, ops)]
    assert act[0] * tp == act[1]  # experts' and shared expert's activations: every token, 1/tp of the width
    gate = [op for op in sliced if op.name == "moe.expert.gate_proj" and op.label("pass") == "fwd"]
    assert sum(op.count for op in gate) == min(8 // ep, tokens * 2) * 4  # experts that receive no token launch nothing
    assert sum(op.gemm_shape[1] * op.count for op in gate) == tokens * 2 * 4
    experts = [op for op in sliced if op.is_gemm and op.name.startswith("moe.expert.")]
    whole = [op for op in ops if op.is_gemm and op.name.startswith("moe.expert.")]
    assert sum(op.flops * op.count for op in experts) * tp == sum(op.flops * op.count for op in whole)


def test_all_to_all_volume_is_the_hand_formula():
    run = RunSpec(mode="train", seq=256, precision="fp16-mixed", optimizer="adam")
    r = C.evaluate(MIXTRAL, run, A100, DGX, C.Layout(dp=8, ep=4, micro_batch=2))
    # each of the rank's 2·256 tokens sends its h = 256 hidden vector (2 bytes) to top-2 experts, and back
    nbytes = 2 * 256 * 2 * 256 * 2
    assert r.family.a2a_bytes == nbytes
    # dispatch and combine, forward and backward: 4 all-to-alls per layer over the 4 ranks (one NVSwitch node)
    a2a = collective_seconds(DGX, "all-to-all", nbytes, 4)
    assert a2a == pytest.approx(3 * 5e-6 + 3 / 4 * nbytes / (300e9 * 0.8))  # (n − 1)/n of the buffer, n − 1 steps
    assert r.values["ep_a2a"] == pytest.approx(4 * 4 * a2a)
    # sequence parallelism shards the tokens over tp before the dispatch
    sp = C.evaluate(MIXTRAL, run, A100, DGX, C.Layout(dp=8, tp=2, ep=4, micro_batch=2, seq_parallel=True))
    assert sp.family.a2a_bytes == nbytes / 2
    assert any(row["group"] == "EP all-to-all" for row in r.records())


def test_expert_parallel_parameters_by_hand():
    run = RunSpec(mode="train", seq=256)
    expert = 3 * 256 * 512  # gate, up, down; no biases
    assert C.layer_params_tp(MIXTRAL, 1) == P.layer_params(MIXTRAL)
    for ep in (1, 2, 8):
        r = C.evaluate(MIXTRAL, run, A100, DGX, C.Layout(dp=8, ep=ep))
        assert r.values["params_layer"] == P.layer_params(MIXTRAL) - 8 * expert + 8 // ep * expert


def test_expert_parallel_needs_experts_it_divides():
    run = RunSpec(mode="train", seq=128)
    with pytest.raises(SpecError, match="ep=2 needs a Mixture-of-Experts model"):
        C.evaluate(load_model("gpt2"), run, A100, DGX, C.Layout(dp=2, ep=2))
    with pytest.raises(SpecError, match="ep=3 must divide dp=6 and experts=8"):
        C.evaluate(MIXTRAL, run, A100, DGX, C.Layout(dp=6, ep=3))


# ---------------------------------------------------------------- the workload's other fields

LLAMA = load_model("llama2-7b")


@pytest.mark.parametrize("spec,run", [
    (LLAMA.replace(layers=2, head_dim=64), RunSpec(mode="train", batch=2, seq=64)),  # Hq = 2048 ≠ h
    (LLAMA.replace(layers=2, kv_heads=8, qkv_bias=True), RunSpec(mode="train", batch=2, seq=64)),  # Qwen2-style
    (LLAMA.replace(layers=2, kv_heads=8), RunSpec(mode="train", batch=2, seq=64, attention="sdpa")),
    (LLAMA.replace(layers=2, kv_heads=8), RunSpec(mode="train", batch=2, seq=64, execution="graphs")),
    (load_model("gpt2"), RunSpec(mode="train", batch=2, seq=64, attention="sdpa", execution="graphs")),
    (load_model("gpt2").replace(embed_dim=512, tie_embeddings=False), RunSpec(mode="train", batch=2, seq=64)),  # OPT-350m
])
def test_new_workload_fields_on_one_device_equal_analyze(spec, run):
    r = C.evaluate(spec, run, A100, DGX, C.Layout(micro_batch=2))
    assert r.seconds == pytest.approx(analyze(spec, run, A100).total.seconds, rel=1e-12)
    assert C.layer_params_tp(spec, 1) == P.layer_params(spec)
    assert C.embedding_params_tp(spec, 1) == P.embedding_params(spec)
    assert C.head_params_tp(spec, 1) == P.head_params(spec)


def test_graphs_execution_drops_the_launch_overhead():
    spec, run = LLAMA.replace(layers=2), RunSpec(mode="train", seq=64)
    eager = C.evaluate(spec, run, A100, DGX, C.Layout(dp=2, tp=4))
    graphs = C.evaluate(spec, run.replace(execution="graphs"), A100, DGX, C.Layout(dp=2, tp=4))
    assert graphs.values["compute"] < eager.values["compute"]
    assert graphs.values["tp_comm"] == eager.values["tp_comm"]


def test_gqa_slicing_splits_kv_heads_or_replicates_them():
    spec, run = load_model("llama-70b"), RunSpec(mode="train", batch=1, seq=128)  # 64 heads, 8 KV heads of 128
    ops = build(spec.replace(layers=1), run, collapse=True)
    T = 128
    for tp, kv_rank in ((4, 2), (8, 1), (16, 1), (32, 1)):  # tp ≤ 8: 8/tp KV heads; beyond: one, replicated
        sliced = C.slice_workload(ops, tp, model=spec)
        assert _fwd(sliced, "attn.k_proj").gemm_shape == (128 * kv_rank, T, 8192, 1)
        assert _fwd(sliced, "attn.q_proj").gemm_shape == (8192 // tp, T, 8192, 1)
        # scores: one B-GEMM per (sequence, KV head of this rank), its 64/tp query heads stacked in N
        assert _fwd(sliced, "attn.score").gemm_shape == (T, T * 64 // tp // kv_rank, 128, kv_rank)
        sm = _fwd(sliced, "softmax")
        assert sm.dim("rows") == 64 // tp * T
    whole_attn = sum(op.flops * op.count for op in ops if op.label("group") == "attention B-GEMM")
    for tp in (2, 8, 16):
        part = sum(op.flops * op.count for op in C.slice_workload(ops, tp, model=spec)
                   if op.label("group") == "attention B-GEMM")
        assert part * tp == whole_attn
    assert C.layout_problems(spec, C.Layout(tp=16), 128) == []
    odd = spec.replace(heads=24, kv_heads=4, head_dim=128)
    assert "tp=6 must divide kv_heads=4 or be a multiple of it" in " ".join(C.layout_problems(odd, C.Layout(tp=6), 128))


def test_fig10_shapes_hold_with_head_dim_bias_and_sdpa():
    spec = LLAMA.replace(layers=1, head_dim=64, kv_heads=8, qkv_bias=True)  # Hq = 32·64 = 2048, Hk = 512
    run = RunSpec(mode="train", batch=2, seq=128, attention="sdpa")
    T, m = 256, 4
    ops = build(spec, run, collapse=True)
    sliced = sdpa(C.slice_workload(build(spec, run, collapse=True, fuse_attention=False), m, model=spec))
    assert _fwd(sliced, "attn.q_proj").gemm_shape == (2048 // m, T, 4096, 1)
    assert _fwd(sliced, "attn.k_proj").gemm_shape == (512 // m, T, 4096, 1)
    assert _fwd(sliced, "attn.out_proj").gemm_shape == (4096, T, 2048 // m, 1)
    assert _fwd(sliced, "ffn.gate_proj").gemm_shape == (11008 // m, T, 4096, 1)
    # the attention core is sliced by heads, then fused: the kernel runs this rank's 8/m KV heads per sequence (their
    # 4 query heads stacked, 4·128 queries), so its batch, FLOPs and bytes are 1/m of the whole
    whole, part = _fwd(ops, "attn.sdpa"), _fwd(sliced, "attn.sdpa")
    assert part.gemm_shape == (128, 4 * 128, 64, 2 * 8 // m) and whole.gemm_shape == part.gemm_shape[:3] + (2 * 8,)
    assert (part.flops * m, part.bytes * m) == (whole.flops, whole.bytes)
    # the Q and K/V bias gradients split with their columns
    grads = sorted(op.dim("cols") for op in sliced if op.name == "bias-grad" and op.label("block") == "attention")
    assert grads == sorted([2048 // m, 512 // m, 512 // m])
    r = C.evaluate(spec, run, A100, DGX, C.Layout(tp=m))
    assert r.values["params_layer"] == C.layer_params_tp(spec, m)
    assert C.layer_params_tp(spec, m) == (2 * 4096 * 2048 + 2048 + 2 * 4096 * 512 + 2 * 512 + 3 * 4096 * 11008) // m \
        + 2 * 4096  # the two RMSNorms whole


# ---------------------------------------------------------------- model FLOPs: Megatron's formula and the workload's

def test_megatron_and_workload_model_flops():
    run = RunSpec(mode="train", seq=2048)
    # F = 4h, MHA: the workload's FLOPs (GEMMs plus element-wise work) are within 0.2% of Megatron's formula
    gpt3 = load_model("gpt3-175b")
    assert C.workload_flops(gpt3, run, 1) / C.model_flops(gpt3, 2048, 1) == pytest.approx(1.0, abs=2e-3)
    # llama-70b: per layer Megatron counts 24h² (QKVO 8h² + FFN 16h²); the workload has QO 4h² + KV 4h²/8 (GQA) and
    # a SwiGLU of 3·2·h·3.5h = 21h²: 25.5h² (+6.25%, less the share of the attention and the vocabulary)
    llama = load_model("llama-70b")
    assert C.workload_flops(llama, run, 1) / C.model_flops(llama, 2048, 1) == pytest.approx(1.06, abs=0.005)
    # nor on the attention kernel: a fused kernel's recomputed scores are recomputation
    small = gpt3.replace(layers=2)
    assert C.workload_flops(small, run.replace(attention="sdpa"), 1) == C.workload_flops(small, run, 1)
    # the workload figure does not depend on the layout or count recomputation; Megatron's summary keeps its name
    a = C.evaluate(gpt3.replace(layers=8), run, A100, DGX, C.Layout(dp=2, global_batch=4))
    b = C.evaluate(gpt3.replace(layers=8), run, A100, DGX, C.Layout(tp=2, pp=2, recompute="full", global_batch=4))
    assert a.workload_flops_per_iteration == b.workload_flops_per_iteration
    s = b.summary()
    # the workload's forward + backward FLOPs of all 4 sequences built as one batch, over 4 devices' seconds
    whole = sum(op.flops * op.count for op in build(gpt3.replace(layers=8), run.replace(batch=4))
                if op.label("part") != "optimizer")
    assert s["workload_flops_per_iteration"] == pytest.approx(whole, rel=1e-12)
    assert s["workload_tflops_per_device"] == pytest.approx(whole / (s["seconds_per_iteration"] * 4) / 1e12)
    # Megatron (Narayanan et al. 2021 eq. 3), B = 4 sequences of s = 2048, l = 8 layers, h = 12288, V = 51200:
    # 72·B·s·l·h²·(1 + s/6h + V/12lh) = 3·B·s·(l·(24h² + 4sh) + 2hV)
    #   = 24576 · (8 · (3,623,878,656 + 100,663,296) + 1,258,291,200) = 24576 · 31,054,626,816
    assert s["model_flops_per_iteration"] == 763_198_508_630_016


def test_sdpa_keeps_no_scores_and_is_not_recomputed_twice():
    spec = LLAMA.replace(layers=2)
    run = RunSpec(mode="train", seq=512, precision="bf16-mixed")
    eager, fused = run, run.replace(attention="sdpa")
    # memory: the unfused layer keeps 5·a·s/h·s·b·h bytes (fp16) of scores, softmax and dropout mask per layer; the
    # fused kernel keeps instead one fp32 log-sum-exp per query and head, s·b·a·4 bytes (b = 1)
    a, s, h = 32, 512, 4096
    gap = (C.activation_bytes_per_layer(spec, s, 1, 1, False, "none", 2)
           - C.activation_bytes_per_layer(spec, s, 1, 1, False, "none", 2, fused_attention=True))
    assert gap == 5 * a * s / h * s * h - s * a * 4
    r = C.evaluate(spec, fused, A100, DGX, C.Layout(tp=2))
    assert r.family.act_layer_bytes == C.activation_bytes_per_layer(spec, s, 1, 2, False, "none", 2,
                                                                    fused_attention=True)
    # selective recomputation reruns the unfused attention core, but not the fused kernel (its backward recomputes)
    for run_, recomputed in ((eager, True), (fused, False)):
        ops = C.family_ops(spec, run_, 2, 1, "selective", True)
        assert any(op.label("pass") == "recompute" for op in ops) == recomputed

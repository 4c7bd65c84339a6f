"""Fusion as a pass: hand-derived bytes per chain rule, FLOPs kept, labels of the absorbed ops, FlashAttention IO."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tstack.api import analyze
from tstack.costmodel.backend import cost_workload, load_target
from tstack.costmodel.calibrated import calibrated
from tstack.costmodel.roofline import roofline
from tstack.errors import SpecError
from tstack.models import load_model
from tstack.spec import RunSpec
from tstack.workload.build import build
from tstack.workload.fusion import (
    LABEL_JOIN,
    Attention,
    MultiTensor,
    flash_backward_elems,
    flash_forward_elems,
    fuse,
    fuse_attention,
    fusion_presets,
    load_profile,
)
from tstack.workload.op import DTYPE_BYTES, LABEL_KEYS

PROFILES = ("none", "apex", "inductor", "flash")

# Bytes of each fused chain, derived by hand from the kernels' formulas (workload/formulas.py): E elements of b
# bytes, R rows, C columns, pb bytes per parameter; a dropout mask is 1 byte per element, LayerNorm keeps 2 fp32
# statistics per row (RMSNorm 1), bias gradients are fp32. "first input + last output", plus the side streams the
# members move, plus (training) the intermediates a backward kernel reads again.
def _hand(rule: str, E: int, R: int, C: int, b: int, pb: int, training: bool) -> int:
    first_last = 2 * E * b
    return {
        # x → y; in training softmax's output is written too (softmax-bwd reads it); dropout writes its mask
        "scale-mask-softmax-dropout": first_last + E + (E * b if training else 0),
        "scale-mask-softmax": first_last,
        # dy → dx, reading the mask and softmax's output y
        "dropout-softmax-bwd-scale": first_last + E + E * b,
        "softmax-bwd-scale": first_last + E * b,
        # x → y, reading the residual operand r, γ, β, writing the mask, the statistics and (training) x + r
        "dropout-residual-layernorm": first_last + E + E * b + 8 * R + 2 * C * pb + (E * b if training else 0),
        "residual-layernorm": first_last + E * b + 8 * R + 2 * C * pb + (E * b if training else 0),
        "dropout-residual-rmsnorm": first_last + E + E * b + 4 * R + C * pb + (E * b if training else 0),
        "residual-rmsnorm": first_last + E * b + 4 * R + C * pb + (E * b if training else 0),
        "dropout-residual": first_last + E + E * b,
        # dy → dx reading LN's input, statistics, γ; writing dγ, dβ, the kept LN gradient (the skip path reads it),
        # and reading the second gradient stream and the mask
        "layernorm-bwd-accumulate-dropout": first_last + E * b + 8 * R + 3 * C * pb + E * b + E * b + E,
        "layernorm-bwd-accumulate": first_last + E * b + 8 * R + 3 * C * pb + E * b + E * b,
        "rmsnorm-bwd-accumulate-dropout": first_last + E * b + 4 * R + 2 * C * pb + E * b + E * b + E,
        "grad-accumulate-dropout": first_last + E * b + E,
        # dy → dx reading x; dx is kept (the GEMMs read it) and its column sums written in fp32
        "gelu-bwd-bias-grad": first_last + E * b + 4 * C,
        "gelu-tanh-bwd-bias-grad": first_last + E * b + 4 * C,
        # three embeddings → y; the sum kept for LayerNorm's backward
        "embedding-sum-layernorm-dropout": first_last + 2 * E * b + E + 8 * R + 2 * C * pb + (E * b if training else 0),
        "embedding-sum-layernorm": first_last + 2 * E * b + 8 * R + 2 * C * pb + (E * b if training else 0),
        "dropout-bwd-layernorm-bwd-embedding-sum": first_last + E + E * b + 8 * R + 3 * C * pb + 2 * E * b,
    }[rule]


def _models():
    bert = load_model("bert-base").replace(layers=2)
    gpt2 = load_model("gpt2").replace(layers=2)
    rms = bert.replace(name="bert-rms", norm="rmsnorm")
    return bert, gpt2, rms


def _workloads():
    for model in _models():
        for run in (RunSpec(mode="train", batch=2, seq=32, precision="fp16-mixed"), RunSpec(batch=2, seq=32),
                    RunSpec(mode="train", batch=2, seq=32, dropout=False)):
            yield model, run, build(model, run)


WORKLOADS = list(_workloads())


@pytest.mark.parametrize("profile", ["apex", "inductor"])
def test_chain_bytes_are_the_hand_derived_first_input_plus_last_output(profile):
    seen = set()
    for _model, run, ops in WORKLOADS:
        for op in fuse(ops, profile):
            rule = op.label("fusion")
            if not op.name.startswith("fused.") or rule == "-" or rule.startswith(("multi-tensor", "gemm", "flash")):
                continue
            R, C = op.dim("rows"), op.dim("cols")
            b = DTYPE_BYTES[op.dtype]  # the parameters' dtype is the activations' (the model copy under mixed precision)
            assert op.bytes == _hand(rule, R * C, R, C, b, b, run.training), (rule, run.mode)
            seen.add(rule)
    assert seen


def test_every_chain_rule_of_every_profile_is_exercised_and_registered():
    seen = {op.label("fusion") for p in PROFILES for _m, _r, ops in WORKLOADS for op in fuse(ops, p)}
    rules = {c.name for p in PROFILES for c in load_profile(p).chains}
    assert rules - seen == set()


@pytest.mark.parametrize("profile", PROFILES)
def test_flops_unchanged_and_labels_cover_the_absorbed_ops(profile):
    for _model, _run, ops in WORKLOADS:
        fused = fuse(ops, profile)
        assert sum(o.flops * o.count for o in fused) - _flash_recompute(ops, fused) == sum(o.flops * o.count for o in ops)
        # every absorbed op accounts for its labels: per key the fused op's values are exactly those it absorbed
        before = Counter(o.name for o in ops)
        for op in fused:
            if op.label("fusion") == "-":
                continue
            names = op.label("absorbed").split("+")
            assert all(n in before for n in names)
            for key in LABEL_KEYS:
                assert all(v for v in op.label(key).split(LABEL_JOIN))
        # kernels: fused ops are never more than the ops they replace
        assert sum(o.count for o in fused) <= sum(o.count for o in ops)
        if profile == "none":
            assert fused == ops


def _flash_recompute(ops, fused):
    """Recomputed FLOPs of the fused backward attention: the forward score B-GEMM and its point-wise kernels
    (scale, mask, softmax, dropout), once per layer that trains (002's forward; FlashAttention Alg. 4 line 11-13)."""
    if not any(o.label("fusion") == "flash-attention" for o in fused) or not any(
            o.label("pass") == "bwd-act" for o in ops):
        return 0
    fwd = [o for o in ops if o.label("pass") == "fwd" and o.label("group") in ("Attn B-GEMM", "Scale+Mask+DR+SM")
           and not o.name.endswith(".context") and o.label("part") != "output"]
    return sum(o.flops * o.count for o in fwd)


def test_labels_of_a_fused_op_are_exactly_those_of_the_ops_it_absorbed():
    model, run = load_model("bert-base").replace(layers=1), RunSpec(mode="train", batch=2, seq=16)
    ops = build(model, run)
    fused = fuse(ops, "flash")
    attn = next(o for o in fused if o.label("fusion") == "flash-attention" and o.label("pass") == "fwd")
    absorbed = [o for o in ops if o.label("layer") == "L0" and o.label("pass") == "fwd" and o.label("block") == "attention"
                and o.label("group") in ("Attn B-GEMM", "Scale+Mask+DR+SM")]
    for key in LABEL_KEYS:
        assert attn.label(key).split(LABEL_JOIN) == list(dict.fromkeys(o.label(key) for o in absorbed))
    assert attn.label("absorbed") == "attn.score+scale+mask+softmax+dropout+attn.context"
    # a chain: the three DR+RC+LN kernels after the attention block of L0
    chain = next(o for o in fused if o.label("fusion") == "dropout-residual-layernorm")
    i = next(i for i, o in enumerate(ops) if o.name == "dropout" and o.label("group") == "DR+RC+LN")
    assert chain.labels[:len(LABEL_KEYS)] == ops[i].labels and [o.name for o in ops[i:i + 3]] == chain.label(
        "absorbed").split("+")
    # the optimizer across layers: the distinct layer labels of the groups it absorbed, in order
    stage1 = next(o for o in fused if o.name == "fused.lamb-stage1")
    assert stage1.label("layer").split(LABEL_JOIN) == list(dict.fromkeys(o.label("layer") for o in ops
                                                                      if o.name == "lamb-stage1"))
    # group-by still sees every layer and the DR+RC+LN group after fusion
    b = analyze(model, run, "a100", fusion="inductor")
    assert set(b.group_by("layer")) >= {"L0"}
    assert "DR+RC+LN" in b.group_by("group")


def test_qkv_gemm_fusion_reads_the_common_operand_once():
    model = load_model("bert-base").replace(layers=1)
    run = RunSpec(mode="train", batch=2, seq=16)
    ops = build(model, run)
    fused = fuse(ops, "inductor")
    H, T, b = 768, 32, 4
    qkv = {o.label("pass"): o for o in fused if o.label("fusion") == "gemm-group" and o.kind == "gemm"}
    # forward 3H×T×H: W (3H·H) and X (H·T) read once, Y (3H·T) written: 3·(H·H + H·T + H·T)·b − 2·H·T·b saved
    assert qkv["fwd"].bytes == (3 * H * H + H * T + 3 * H * T) * b
    # bwd-act H×T×3H: W (H·3H) and dY (3H·T) read, dX (H·T) written once instead of three times
    assert qkv["bwd-act"].bytes == (3 * H * H + 3 * H * T + H * T) * b
    # bwd-weight H×3H×T: X (H·T) read once, dY (3H·T) read, dW (3H·H) written
    assert qkv["bwd-weight"].bytes == (H * T + 3 * H * T + 3 * H * H) * b
    assert qkv["fwd"].flops == 3 * 2 * H * T * H
    assert qkv["fwd"].label("absorbed") == "attn.q_proj+attn.k_proj+attn.v_proj"


def test_fused_attention_traffic_equals_the_io_formula_on_hand_cases():
    # N = 8 queries and keys, d = 2, M = 16 elements: Bc = ⌈16/8⌉ = 2, Tc = 4.
    # Forward: O, ℓ, m init (8·2 + 16) + K, V (2·8·2) + Tc·(3·8·2 + 4·8) = 16 + 32 + 4·48 = 240 matrix elements,
    # 16 + 4·32 = 144 statistics.
    assert flash_forward_elems(8, 8, 2, 16) == (16 + 32 + 4 * 48, 16 + 4 * 32)
    # Backward: dQ, dK, dV init (16 + 32) + K, V read and dK, dV written (64) + Tc·5·8·2 = 272; stats Tc·2·8 = 64.
    assert flash_backward_elems(8, 8, 2, 16) == (16 + 32 + 64 + 4 * 80, 64)
    # M ≥ 4·N·d: one block, so K and V and Q, O move once: O(Nd), no N² term
    assert flash_forward_elems(8, 8, 2, 4 * 8 * 2) == (16 + 32 + 48, 16 + 32)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(16, 4096), d=st.sampled_from([16, 32, 64, 128]), m=st.integers(2**12, 2**17))
def test_flash_traffic_is_theta_n2_d2_over_m(n, d, m):
    mat, _ = flash_forward_elems(n, n, d, m)
    tc = math.ceil(n / math.ceil(m / (4 * d)))
    assert mat == n * d + 2 * n * d + 3 * tc * n * d
    if tc > 1:  # in the tiled regime traffic/(N²d²/M) stays within constant bounds: 12 ± the rounding of Bc and Tc
        ratio = mat / (n * n * d * d / m)
        assert 3 <= ratio <= 40


def test_fused_attention_op_uses_the_device_onchip_memory():
    model = load_model("bert-base").replace(layers=1)
    ops = build(model, RunSpec(batch=1, seq=512))
    small = fuse_attention(ops, Attention({"default": 16384}), "x")
    large = fuse_attention(ops, Attention({"default": 16384, "big": 1 << 20}), "big")
    f_small = next(o for o in small if o.name == "attn.sdpa")
    f_large = next(o for o in large if o.name == "attn.sdpa")
    assert f_small.bytes > f_large.bytes
    # unfused attention writes the 512×512 score matrix; the fused kernel with a large M moves only Q, K, V, O
    assert f_large.bytes < sum(o.bytes for o in ops if o.label("group") == "Scale+Mask+DR+SM")


def test_multi_tensor_launches_follow_the_chunk_and_block_limits():
    mt = MultiTensor(("adam",), 65536, 320)
    assert mt.launches([65536 * 320]) == 1
    assert mt.launches([65536 * 320 + 1]) == 2
    assert mt.launches([1] * 640) == 2  # each tensor is at least one chunk
    limited = MultiTensor(("adam",), 65536, 320, {"adam": 36})
    assert limited.launches([1] * 72, "adam") == 2 and limited.launches([1] * 73, "adam") == 3
    # a tensor cut by a full launch carries over: 320 chunks, then its last chunk and the next tensor together
    assert limited.launches([65536 * 320 + 1, 1], "adam") == 2
    model = load_model("bert-base").replace(layers=2)
    ops = build(model, RunSpec(mode="train", batch=2, seq=16, optimizer="adam"))
    fused = fuse(ops, "apex")
    adam = [o for o in fused if o.name == "fused.adam"]
    # apex: one tensor per parameter group, chunks of 65,536, 320 chunks and 36 tensors a launch. The embedding's
    # 23,837,184 parameters are 364 chunks, each layer's 7,087,872 are 109, the head's 1,214,780 are 19: 601 chunks
    # of 4 tensors. The first launch fills 320 chunks inside the embedding; its other 44, the layers' 218 and the
    # head's 19 (281 chunks) are the second.
    assert [o.dim("params") for o in ops if o.name == "adam"] == [23_837_184, 7_087_872, 7_087_872, 1_214_780]
    assert sum(o.count for o in adam) == 2
    assert sum(o.bytes * o.count for o in adam) == sum(o.bytes * o.count for o in ops if o.name == "adam")


@pytest.mark.parametrize("backend", [roofline, calibrated])
def test_fusion_works_for_device_backends_and_is_faster(backend):
    ops = build(load_model("bert-large"), RunSpec(mode="train", batch=8, seq=128, precision="fp16-mixed"))
    dev = load_target("a100-80gb")
    seconds = {}
    for p in PROFILES:
        _, costs = cost_workload(fuse(ops, p, dev.name), dev, backend)
        seconds[p] = sum(c.seconds for c in costs)
    assert seconds["none"] > seconds["apex"] > seconds["inductor"] > seconds["flash"]


def test_profiles_load_and_bad_files_name_the_problem(tmp_path):
    assert set(PROFILES) <= set(fusion_presets())
    assert load_profile("flash").chains == load_profile("inductor").chains
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nchains:\n  - {name: x, ops: [scale, nonsense]}\n")
    with pytest.raises(SpecError, match="nonsense"):
        load_profile(bad)


def test_fig12_decompositions_hand_derived():
    from tstack.studies.repro_002_fusion import adam_ops, layernorm_ops

    R, C, b = 64, 32, 4
    E = R * C
    unfused, fused = layernorm_ops(R, C)
    # op by op: 6 full-tensor passes of 2 tensors (sub, square, mul-rstd, mul-gamma, add-beta: 2 each; the two means
    # read 1) = 12·E·b, fp32 row statistics 32·R bytes (means and sub/mul-rstd reads 4 each, ε and rsqrt 8 each),
    # γ and β once each
    assert sum(o.bytes for o in unfused) == 12 * E * b + 32 * R + 2 * C * b
    assert fused[0].bytes == 2 * E * b + 8 * R + 2 * C * b and len(unfused) == 9
    sizes = [1000, 70000, 5]
    unfused, fused = adam_ops(sizes)
    # per tensor 8 kernels; 18 fp32 streams per parameter (lerp 3, mul 2, addcmul 3, sqrt 2, div 2, add 2,
    # addcdiv 4) plus the step counter's 8 bytes; fused: w, g, m, v read and w, m, v written once
    assert sum(o.count for o in unfused) == 8 * len(sizes)
    assert sum(o.bytes for o in unfused) == 18 * 4 * sum(sizes) + 8 * len(sizes)
    assert sum(o.bytes * o.count for o in fused) == 7 * 4 * sum(sizes)
    assert sum(o.count for o in fused) == 1  # 3 tensors, 2 + 1 + 1 = 4 chunks of 65,536 elements: one launch


def test_repro_sections_fusion_and_nmc():
    from tstack.studies.sections import SECTIONS

    rows = SECTIONS["002"]["fusion"]("mi100") + SECTIONS["002"]["nmc"]("mi100")
    keys = {r.key: r for r in rows}
    assert {"fig12.layernorm.kernels", "fig12.adam.kernels", "fig12.qkv.max", "nmc.lamb", "nmc.e2e.min"} <= set(keys)
    assert keys["fig12.layernorm.kernels"].tstack == 9.0
    assert keys["nmc.lamb"].tstack > 1 and keys["nmc.e2e.max"].tstack > keys["nmc.e2e.min"].tstack > 0


@settings(max_examples=15, deadline=None)
@given(model=st.sampled_from(["bert-base", "gpt2", "transformer-base", "bert-c3"]), layers=st.integers(1, 3),
       batch=st.integers(1, 4), seq=st.sampled_from([8, 32, 64]), train=st.booleans(),
       precision=st.sampled_from(["fp32", "fp16-mixed"]), optimizer=st.sampled_from(["lamb", "adam", "sgd"]),
       checkpoint=st.sampled_from(["none", "every-1"]), collapse=st.booleans(), profile=st.sampled_from(PROFILES))
def test_fusion_keeps_flops_and_never_adds_bytes_or_kernels(model, layers, batch, seq, train, precision, optimizer,
                                                            checkpoint, collapse, profile):
    m = load_model(model).replace(layers=layers, **({"decoder_layers": layers} if model == "transformer-base" else {}))
    run = RunSpec(mode="train" if train else "infer", batch=batch, seq=seq, precision=precision if train else "fp32",
                  optimizer=optimizer, checkpoint=checkpoint if train else "none")
    ops = build(m, run, collapse=collapse)
    fused = fuse(ops, profile)
    assert sum(o.flops * o.count for o in fused) - _flash_recompute(ops, fused) == sum(o.flops * o.count for o in ops)
    assert sum(o.bytes * o.count for o in fused) <= sum(o.bytes * o.count for o in ops)
    # kernels: chains, GEMM groups and attention never add any; multi-tensor apply launches ⌈chunks / 320⌉ per
    # optimizer kernel, which can exceed the per-layer kernels it replaces when a tensor is huge (as apex does:
    # BERT-C3's 62M-parameter word embedding alone is 955 chunks, three launches)
    rest = [o for o in fused if o.label("part").split(LABEL_JOIN)[0] != "optimizer"]
    assert sum(o.count for o in rest) <= sum(o.count for o in ops if o.label("part") != "optimizer")
    mt = load_profile(profile).multi_tensor
    for name in {o.name for o in ops if o.label("part") == "optimizer"} & set(mt.ops if mt else ()):
        params = [o.dim("params") for o in ops if o.name == name for _ in range(o.count)]
        launches = mt.launches(params, name)
        assert sum(o.count for o in fused if o.name == f"fused.{name}") == launches
        # independent of the launch rule: a launch takes at most max_blocks chunks and max_tensors tensors
        chunks = sum(max(1, math.ceil(p / mt.chunk_elems)) for p in params)
        assert launches >= max(math.ceil(chunks / mt.max_blocks), math.ceil(len(params) / mt.max_tensors[name]))


def test_analyze_json_carries_the_fusion_labels(capsys):
    import json

    from tstack.cli.core import run as cli

    assert cli(["analyze", "bert-base", "--seq", "32", "--mode", "train", "--fusion", "flash", "--json", "-"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["run"]["options"]["fusion"] == "flash"
    flash = [r for r in doc["records"] if r.get("fusion") == "flash-attention"]
    assert flash and all(r["absorbed"].startswith("attn.") for r in flash)

"""Execution modes (eager vs CUDA graphs), attention kernels (unfused vs sdpa), tf32 and the GPU device presets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tstack import ModelSpec, RunSpec, analyze, build, load_device, load_model
from tstack.hardware.device import device_presets
from tstack.workload.labels import ATTN_BGEMM, FUSED_ATTENTION, SCALE_MASK_SM
from tstack.workload.op import LABEL_KEYS, Op

LLAMA = ModelSpec(name="gqa", arch="decoder", layers=2, hidden=256, heads=8, kv_heads=2, ffn=512, vocab=1000,
                  max_positions=4096, activation="silu", gated_ffn=True, norm="rmsnorm", norm_position="pre",
                  position="rotary", bias=False, head="lm")
GPUS = ("a100", "a100-80gb", "h100", "h100-pcie", "h200", "l4", "mi250x", "mi300x")


def test_graphs_amortize_launches_and_drop_framework_copies():
    decode = RunSpec(batch=1, seq=1, phase="decode", kv_len=511, precision="bf16-mixed")
    eager = build(LLAMA, decode)
    graphs = build(LLAMA, decode.replace(execution="graphs"))
    copies = [o for o in eager if o.kind == "copy"]
    # per layer: torch.cat of K and V (512 rows × 64) and repeat_kv of K and V (512·2 rows × 32, written 4 times)
    assert sorted({(o.name, o.dims) for o in copies}) == [
        ("kv-cache-cat", (("rows", 512), ("cols", 64), ("repeat", 1))),
        ("repeat-kv", (("rows", 1024), ("cols", 32), ("repeat", 4)))]
    assert len(copies) == 2 * 2 * 2 and sum(o.bytes for o in copies) == 2 * (2 * 512 * 64 * 2 * 2 + 2 * 1024 * 32 * 5 * 2)
    assert not [o for o in graphs if o.kind == "copy"] and not any(o.launch for o in graphs)
    dev = load_device("a100-80gb")
    b_eager = analyze(LLAMA, decode, dev)
    b_graphs = analyze(LLAMA, decode.replace(execution="graphs"), dev)
    assert b_graphs.total.overhead_s == 0 < b_eager.total.overhead_s
    assert b_eager.total.overhead_s == pytest.approx(dev.launch_overhead * len(eager))
    assert b_graphs.total.seconds < b_eager.total.seconds - b_eager.total.overhead_s + 1e-12


def _core(ops: tuple[Op, ...], layer: str = "L0") -> list[Op]:
    """The attention core of one layer: its B-GEMMs and point-wise kernels, or the fused kernel."""
    return [o for o in ops if o.label("layer") == layer and (o.label("fusion") == FUSED_ATTENTION
                                                              or o.label("group") in (ATTN_BGEMM, SCALE_MASK_SM))]


def test_sdpa_keeps_the_flops_and_drops_the_score_matrix():
    run = RunSpec(batch=2, seq=256, precision="fp16-mixed")
    unfused, fused = build(LLAMA, run), build(LLAMA, run.replace(attention="sdpa"))
    assert sum(o.flops for o in _core(fused)) == sum(o.flops for o in _core(unfused))
    assert [(o.name, o.label("group"), o.label("fusion")) for o in _core(fused)] == [
        ("attn.sdpa", "Attn B-GEMM | Scale+Mask+DR+SM", FUSED_ATTENTION)]
    # FlashAttention Alg. 1 for one (sequence, KV head), its 4 query heads stacked: n_q = 4·256, n_kv = 256, d = 32;
    # default on-chip M = 102,400 B = 51,200 fp16 elements, Bc = ⌈51200/(4·32)⌉ = 400 ≥ 256 keys: Tc = 1.
    # Matrix elements n_q·d + 2·n_kv·d + Tc·3·n_q·d = 32,768 + 16,384 + 98,304 = 147,456 (fp16), statistics
    # 2·n_q + Tc·4·n_q = 6,144 (fp32); × B·kv_heads = 4 → 4·(147,456·2 + 6,144·4) = 1,277,952 bytes.
    assert sum(o.bytes for o in _core(fused)) == 1_277_952
    score_matrix = 2 * 8 * 256 * 256 * 2  # B·h·S·S fp16 elements of one layer
    assert sum(o.bytes for o in _core(fused)) < score_matrix < sum(o.bytes for o in _core(unfused))


def test_sdpa_backward_recomputes_the_forward_core():
    """The fused backward does the unfused backward's work plus the forward scores and probabilities again."""
    run = RunSpec(mode="train", batch=1, seq=128, precision="bf16-mixed")
    unfused, fused = _core(build(LLAMA, run)), _core(build(LLAMA, run.replace(attention="sdpa")))

    def flops(ops, forward, skip=""):
        return sum(o.flops for o in ops if (o.label("pass") == "fwd") == forward and o.name != skip)

    assert [(o.label("pass"), o.label("group"), o.label("nlpfast")) for o in fused] == [
        (p, "Attn B-GEMM | Scale+Mask+DR+SM", "dot product | softmax | weighted sum") for p in ("fwd", "bwd-act")]
    assert flops(fused, True) == flops(unfused, True)
    assert flops(fused, False) == flops(unfused, False) + flops(unfused, True, skip="attn.context")
    products = [o for o in unfused if o.is_gemm]
    assert sum(o.flops for o in products if o.label("pass") != "fwd") == 2 * sum(  # 4 backward products
        o.flops for o in products if o.label("pass") == "fwd")


@pytest.mark.parametrize("name", GPUS)
def test_gpu_presets_have_sources_and_tf32_where_the_part_has_it(name):
    dev = load_device(name)
    assert dev.sources and dev.kind == "gpu"
    tf32 = dev.peak("matrix", "tf32")
    assert dev.peak("matrix", "fp32") <= tf32 <= dev.peak("matrix", "bf16")


def test_tf32_is_faster_than_fp32_on_ampere_and_not_on_volta():
    run = RunSpec(batch=8, seq=128)
    fp32 = analyze("bert-large", run, "a100-80gb").total.seconds
    tf32 = analyze("bert-large", run.replace(precision="tf32"), "a100-80gb").total.seconds
    assert tf32 < fp32 / 2
    assert "v100" in device_presets()
    with pytest.raises(Exception, match="tf32"):
        analyze("bert-large", run.replace(precision="tf32"), "v100")


@pytest.mark.parametrize(("name", "rows", "cols", "repeat"), [("kv-cache-cat", 9, 32, 1), ("repeat-kv", 12, 16, 4)])
def test_eager_framework_copies_run_and_match_reference(name, rows, cols, repeat):
    torch = pytest.importorskip("torch")
    from tstack.profiler.opexec import prepare, reference
    from tstack.profiler.runtime import RuntimeConfig
    from tstack.workload import formulas as F

    c = F.Counts(0, rows * cols * (1 + repeat) * 4, (("rows", rows), ("cols", cols), ("repeat", repeat)))
    op = Op(kind="copy", name=name, dims=c.dims, dtype="fp32", flops=0, bytes=c.bytes, labels=())
    p = prepare(op, RuntimeConfig(device="cpu"))
    before = {k: v.clone() for k, v in p.inputs.items()}
    p.run()
    assert p.output().numel() == rows * cols * repeat
    assert torch.equal(p.output(), reference(op, before)["y"].to(p.output().dtype))


@pytest.mark.parametrize(("fields", "message"), [
    ({"execution": "jit"}, "execution='jit' is not one of eager, graphs"),
    ({"attention": "flash"}, "attention='flash' is not one of unfused, sdpa"),
    ({"mlm_fraction": 0.0}, "mlm_fraction=0.0 must be a number in [1e-06, 1]"),
])
def test_bad_run_fields_name_field_value_and_allowed(fields, message):
    from tstack.errors import SpecError

    with pytest.raises(SpecError, match=message.replace("[", r"\[").replace("]", r"\]")):
        RunSpec(**fields)


def test_model_shape_fields_are_validated_together():
    from tstack.errors import SpecError

    with pytest.raises(SpecError, match=r"top_k=0 must be in \[1, experts=4\]"):
        LLAMA.replace(experts=4)
    explicit = LLAMA.replace(hidden=200, head_dim=64)  # 8 heads of 64 need not divide hidden
    assert (explicit.q_hidden, explicit.kv_hidden) == (512, 128)
    assert LLAMA.replace(hidden=512).head_dim == 64  # a derived head_dim follows hidden
    with pytest.raises(SpecError, match=r"heads=8 must divide hidden=100 \(or give head_dim\)"):
        LLAMA.replace(hidden=100)


@st.composite
def shaped(draw):
    heads = draw(st.sampled_from([2, 4, 8]))
    experts = draw(st.sampled_from([0, 4, 8]))
    model = LLAMA.replace(heads=heads, kv_heads=draw(st.sampled_from([k for k in (1, 2, heads) if heads % k == 0])),
                          head_dim=draw(st.sampled_from([0, 16, 48])), experts=experts,
                          top_k=draw(st.integers(1, experts)) if experts else 0,
                          shared_expert_ffn=draw(st.sampled_from([0, 64])) if experts else 0,
                          sliding_window=draw(st.sampled_from([0, 7])), qkv_bias=draw(st.booleans()))
    decode = draw(st.booleans())
    run = RunSpec(mode="infer" if decode else draw(st.sampled_from(["infer", "train"])), batch=draw(st.integers(1, 3)),
                  seq=1 if decode else draw(st.integers(1, 40)), phase="decode" if decode else "prefill",
                  kv_len=draw(st.integers(1, 40)) if decode else 0, precision="bf16-mixed")
    return model, run


@settings(max_examples=40, deadline=None)
@given(shaped())
def test_modes_keep_the_gemm_work_and_every_op_well_formed(pair):
    """Execution mode never changes the GEMM work; every op has all labels in order and GEMM FLOPs of 2·M·N·K."""
    model, run = pair
    eager, graphs = build(model, run), build(model, run.replace(execution="graphs"))

    def gemm_flops(ops):
        return sum(o.flops * o.count for o in ops if o.is_gemm)

    assert gemm_flops(eager) == gemm_flops(graphs) > 0
    assert all(o.launch for o in eager) and not any(o.launch for o in graphs)
    if not model.sliding_window and not run.training:  # a fused kernel does the same work
        assert sum(o.flops for o in build(model, run.replace(attention="sdpa"))) == sum(o.flops for o in eager)
    for o in eager:
        assert tuple(k for k, _ in o.labels) == LABEL_KEYS and o.bytes > 0 and o.flops >= 0 and o.count >= 1
        if o.is_gemm:
            M, N, K, batch = o.gemm_shape
            assert o.flops == 2 * M * N * K * batch


def test_api_runs_an_accelerator_as_a_graph_and_a_gpu_eagerly_by_default():
    import tstack

    # The CLI's defaults, from the same function: a decode step on the accelerator has no eager framework copies.
    assert tstack.analyze("bert-base", device="gemmini-ibert", seq=64).run.execution == "graphs"
    assert tstack.analyze("bert-base", device="a100", seq=64).run.execution == "eager"


@settings(max_examples=30, deadline=None)
@given(shaped(), st.sampled_from(["", "a100", "t4", "mi100"]))
def test_sdpa_is_the_flash_fusion_rule(pair, device):
    """``--attention sdpa`` and the flash profile's attention rule are one model of the kernel: the same fused ops."""
    from tstack.workload.fusion import fuse_attention, load_profile

    model, run = pair
    model = model.replace(sliding_window=0)  # a window caps the keys of an sdpa run only
    fused = [o for o in build(model, run.replace(attention="sdpa"), device=device) if o.label("fusion") == FUSED_ATTENTION]
    flash = [o for o in fuse_attention(build(model, run), load_profile("flash").attention, device)
             if o.label("fusion") == FUSED_ATTENTION]
    assert fused == flash and len(fused) == model.layers * (2 if run.training else 1)


@pytest.mark.parametrize("args", [
    ["analyze", "gpt2", "-d", "h100"],
    ["sweep", "gpt2", "--seq", "128,256", "-d", "h100", "--executor", "serial"],
    ["fuse", "gpt2", "-d", "h100", "--fusion", "none,inductor"],
    ["cluster", "run", "gpt2", "--tp", "2", "--dp", "2", "--seq", "256"],
    ["cluster", "search", "gpt2", "--gpus", "4", "--global-batch", "8", "--seq", "256", "--top", "1",
     "--executor", "serial"],
])
def test_every_command_that_predicts_a_gpu_run_takes_the_modes(tmp_path, args):
    """--execution and --attention reach the run of every prediction command, and its numbers are the API's."""
    import json

    from tstack.cli.core import run
    from tstack.costmodel import cluster as C
    from tstack.hardware.network import load_network

    out = tmp_path / "doc.json"
    assert run(["-q", *args, "--execution", "graphs", "--attention", "sdpa", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    spec = doc["run"]["spec"]
    assert (spec["execution"], spec["attention"]) == ("graphs", "sdpa")
    if args[:2] == ["cluster", "run"]:
        r = C.evaluate(load_model("gpt2"), RunSpec(mode="train", seq=256, precision="fp16-mixed", optimizer="adam",
                                                     execution="graphs", attention="sdpa"),
                       load_device("a100-80gb"), load_network("dgx-a100"), C.Layout(tp=2, dp=2, global_batch=2))
        assert doc["summary"]["seconds_per_iteration"] == pytest.approx(r.seconds, rel=1e-12)
    def total(records, **match):
        return sum(r["seconds"] for r in records if all(r[k] == v for k, v in match.items()))

    if args[0] in ("analyze", "sweep", "fuse"):  # one device: the numbers are analyze's of the same run
        seq = 128 if args[0] == "sweep" else 1024
        b = analyze("gpt2", RunSpec(mode="train" if args[0] == "fuse" else "infer", seq=seq, execution="graphs",
                                    attention="sdpa"), "h100")
        got = {"analyze": lambda: doc["summary"]["seconds"], "sweep": lambda: total(doc["records"], seq=seq),
               "fuse": lambda: total(doc["records"], profile="none", group="total")}[args[0]]()
        assert got == pytest.approx(b.total.seconds, rel=1e-12)
    if args[:2] == ["cluster", "search"]:  # the modes change what the search finds
        assert run(["-q", *args, "--json", str(out)]) == 0
        assert json.loads(out.read_text())["summary"]["best_seconds_per_iteration"] > \
            doc["summary"]["best_seconds_per_iteration"]
    assert run(["-q", *args, "--attention", "flash"]) == 2  # one line naming the value and the choices


def test_profile_measures_the_fused_attention_kernel(tmp_path):
    """`profile --attention sdpa` times the fused op (F.scaled_dot_product_attention) once per layer, under the
    labels the prediction gives it."""
    import json
    from pathlib import Path

    pytest.importorskip("torch")
    from tstack.cli.core import run

    model = str(Path(__file__).resolve().parents[1] / "examples" / "bert-tiny")
    out = tmp_path / "p.json"
    assert run(["-q", "profile", model, "--attention", "sdpa", "--batch", "2", "--seq", "16", "--threads", "1",
                "--warmup", "0", "--repeats", "1", "--json", str(out)]) == 0
    fused = [r for r in json.loads(out.read_text())["records"] if r["name"] == "attn.sdpa"]
    predicted = [o for o in build(load_model(model), RunSpec(batch=2, seq=16, attention="sdpa")) if o.name == "attn.sdpa"]
    assert [(r["group"], r["M"], r["N"], r["K"], r["gemm_batch"], r["flops"]) for r in fused] == [
        (o.label("group"), *o.gemm_shape, o.flops) for o in predicted] and len(fused) == 2
    assert all(r["seconds"] > 0 for r in fused)

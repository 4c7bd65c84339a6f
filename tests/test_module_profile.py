"""Measured whole-model profiles (torch.profiler + module scopes) against tstack's predicted workload.

Tiny random-weight HuggingFace models (hidden 64, 2 layers, B=2, S=16; nothing downloaded), one thread. No timed
assertions: only the structure of the measured ops (labels, GEMM shapes) and the bookkeeping of the times.
GEMM convention: torch's Linear computes [T, in]·Wᵀ with W of [out, in]; tstack (002 Table 2b) writes it M=out, N=T,
K=in. A B-GEMM A[b, n, k]·B[b, k, m] is M=m, N=n, K=k over batch b.
"""

from __future__ import annotations

import statistics
from collections import Counter

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tstack import ModelSpec, RunSpec, TstackError, build, load_model  # noqa: E402
from tstack.profiler.hfmodels import build_hf_model, load_builder, random_inputs, to_hf_config  # noqa: E402
from tstack.profiler.module import Setup, profile_module, profile_preset  # noqa: E402

B, S, H, F, V, HEADS = 2, 16, 64, 128, 100, 2  # dh = 32, so score (S, S, dh) and context (dh, S, S) differ
T = B * S
TABLE_II = {"Q-Gen", "K/V-Gen", "dot product", "softmax", "weighted sum", "attention FC", "linear trans-1",
            "activation", "linear trans-2", "layernorm/residual"}
BERT = ModelSpec(name="bert-tiny", arch="encoder", layers=2, hidden=H, heads=HEADS, ffn=F, vocab=V, max_positions=32,
                 type_vocab=2)
GPT2 = ModelSpec(name="gpt2-tiny", arch="decoder", layers=2, hidden=H, heads=HEADS, ffn=F, vocab=V, max_positions=32,
                 activation="gelu-tanh", norm_position="pre", head="lm")
LABELS = ("part", "layer", "block", "group", "nlpfast", "pass")


def gemm_keys(ops, where=lambda op: True) -> Counter:
    """Multiset of (name, labels, M, N, K, batch) of the GEMMs and B-GEMMs."""
    return Counter((op.name, *(op.label(k) for k in LABELS), *op.gemm_shape)
                   for op in ops if op.kind in ("gemm", "bgemm") and where(op))


@pytest.fixture(scope="module")
def bert_infer():
    return profile_preset(BERT, RunSpec(batch=B, seq=S), threads=1, warmup=1, repeats=2)


@pytest.fixture(scope="module")
def gpt2_infer():
    return profile_preset(GPT2, RunSpec(batch=B, seq=S), threads=1, warmup=1, repeats=2)


@pytest.mark.parametrize("which, spec", [("bert_infer", BERT), ("gpt2_infer", GPT2)])
def test_every_predicted_forward_gemm_is_measured_with_same_labels_and_shape(which, spec, request):
    measured = request.getfixturevalue(which).breakdown.ops
    predicted = build(spec, RunSpec(batch=B, seq=S))
    assert gemm_keys(measured) == gemm_keys(predicted)  # nothing missing, nothing extra


def test_bert_gemm_shapes_golden(bert_infer):
    shapes = {(op.label("layer"), op.name): op.gemm_shape for op in bert_infer.breakdown.ops if op.kind.endswith("gemm")}
    assert shapes["L1", "attn.q_proj"] == (H, T, H, 1)  # [T, in]·[in, out]: M = out, N = T = B·S, K = in
    assert shapes["L1", "attn.score"] == (S, S, H // HEADS, B * HEADS)  # Skv × Sq × dh, batched over B·h
    assert shapes["L1", "attn.context"] == (H // HEADS, S, S, B * HEADS)  # dh × Sq × Skv
    assert shapes["L0", "ffn.fc1"] == (F, T, H) + (1,) and shapes["L0", "ffn.fc2"] == (H, T, F, 1)
    assert shapes["-", "pooler"] == (H, B, H, 1)  # the [CLS] token of each sequence
    q = next(op for op in bert_infer.breakdown.ops if op.name == "attn.q_proj")
    assert q.flops == 2 * H * T * H  # 2·M·N·K


def test_gpt2_fused_qkv_is_split_and_lm_head_scores_last_token(gpt2_infer):
    ops = gpt2_infer.breakdown.ops
    qkv = [op for op in ops if op.label("layer") == "L0" and op.kind == "gemm" and op.label("group") == "Linear GEMM"
           and op.name != "attn.out_proj"]
    assert [(op.name, op.label("nlpfast"), op.gemm_shape) for op in qkv] == [
        ("attn.q_proj", "Q-Gen", (H, T, H, 1)), ("attn.k_proj", "K/V-Gen", (H, T, H, 1)),
        ("attn.v_proj", "K/V-Gen", (H, T, H, 1))]  # c_attn's one 3H-wide GEMM, a third to each
    costs = dict(zip(ops, gpt2_infer.breakdown.costs))
    assert costs[qkv[0]].seconds == pytest.approx(costs[qkv[1]].seconds)
    assert [op.gemm_shape for op in ops if op.name == "lm_head"] == [(V, B, H, 1)]  # logits of the last token only


@pytest.mark.parametrize("which", ["bert_infer", "gpt2_infer"])
def test_group_by_gives_table_ii_and_002_groups(which, request):
    b = request.getfixturevalue(which).breakdown
    assert TABLE_II <= set(b.group_by("nlpfast")) and TABLE_II <= set(b.group_by("nlpfast-op"))
    groups = set(b.group_by("group"))
    assert {"Linear GEMM", "Attn B-GEMM", "Scale+Mask+DR+SM", "FC GEMM", "GeLU", "DR+RC+LN", "Embedding", "Output"} <= groups
    assert set(b.group_by("layer")) >= {"L0", "L1"} and set(b.group_by("pass")) == {"fwd"}
    assert sum(b.shares("group").values()) == pytest.approx(1.0)
    assert [t for t, _ in b.hierarchy()] == ["Iteration", "Transformer layer", "Attention", "FC"]


def test_unattributed_time_is_reported_not_hidden(bert_infer):
    p = bert_infer
    assert p.attributed_s == pytest.approx(sum(c.seconds for c in p.breakdown.costs)) and p.attributed_s > 0
    assert p.wall_s == statistics.median(p.wall_runs) and len(p.wall_runs) == 2
    assert p.unattributed_s == pytest.approx(p.wall_s - p.attributed_s)
    # The ops are kernels inside the profiled steps: with 2 steps (medians = means) they cannot exceed the steps' span.
    assert 0 < p.attributed_s <= p.profiled_s and p.unattributed_profiled_s >= 0
    assert not any("unattributed" in op.name for op in p.breakdown.ops)
    assert len(p.kernels) <= len(p.breakdown.ops)  # raw kernels of one step (a fused QKV kernel becomes three ops)


def test_training_step_gemms_match_tstack_backward_and_have_update_ops():
    run = RunSpec(mode="train", batch=B, seq=S, optimizer="adam")
    p = profile_preset(BERT, run, threads=1, warmup=1, repeats=1)
    in_layers = lambda op: op.label("part") == "transformer"  # noqa: E731 - HF's MLM head scores all S, tstack's 15%
    assert gemm_keys(p.breakdown.ops, in_layers) == gemm_keys(build(BERT, run), in_layers)  # fwd, bwd-act, bwd-weight
    assert {"fwd", "bwd-act", "bwd-weight", "update"} <= set(p.breakdown.group_by("pass"))
    assert "Adam" in p.breakdown.group_by("group") and p.notes == ()
    lamb = profile_preset(BERT, run.replace(optimizer="lamb"), threads=1, warmup=0, repeats=1)
    assert "update" not in lamb.breakdown.group_by("pass") and "forward + backward only" in lamb.notes[0]


def test_generic_labels_for_unknown_modules():
    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn, self.norm = torch.nn.Linear(8, 8), torch.nn.LayerNorm(8)

        def forward(self, x):
            return self.norm(x + self.attn(x))

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks, self.head = torch.nn.ModuleList([Block(), Block()]), torch.nn.Linear(8, 3)

        def forward(self, x):
            for blk in self.blocks:
                x = blk(x)
            return self.head(x)

    p = profile_module(Net(), torch.randn(4, 8), threads=1, warmup=0, repeats=1)
    ops = p.breakdown.ops
    linear = [op for op in ops if op.kind == "gemm"]
    assert [(op.label("part"), op.label("layer"), op.label("block"), op.label("group")) for op in linear] == [
        ("transformer", "L0", "attention", "Linear"), ("transformer", "L1", "attention", "Linear"),
        ("other", "-", "output", "Linear")]
    assert linear[0].gemm_shape == (8, 4, 8, 1) and {op.label("nlpfast") for op in ops} == {"other"}
    assert {op.label("group") for op in ops if op.label("block") == "DR+RC+LN"} == {"LayerNorm"}
    assert p.breakdown.run.batch == 4 and p.breakdown.model.name == "Net"


def test_load_builder_hf_bert(tmp_path):
    f = tmp_path / "my_model.py"
    f.write_text("import transformers\n\ndef build():\n    cfg = transformers.BertConfig(vocab_size=50, hidden_size=32, "
                 "num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, max_position_embeddings=16)\n"
                 "    return transformers.BertModel(cfg)\n")  # the default attention (SDPA in recent transformers)
    model = load_builder(f"{f}:build")
    assert isinstance(model, transformers.BertModel) and isinstance(load_builder(str(f)), transformers.BertModel)
    p = profile_module(model, random_inputs(model, (1, 8)), threads=1, warmup=0, repeats=1)
    assert p.breakdown.model.hidden == 32 and p.breakdown.run.seq == 8  # ModelSpec read from the HF config
    assert {"Q-Gen", "K/V-Gen", "attention FC", "linear trans-2"} <= set(p.breakdown.group_by("nlpfast"))
    if model.config._attn_implementation == "sdpa":  # one fused kernel: Q·Kᵀ (8×8×16) and P·V (16×8×8) over B·h = 2
        sdpa = [op for op in p.breakdown.ops if op.name == "attn.sdpa"]
        assert [(op.label("group"), op.label("fusion"), op.gemm_shape, op.flops) for op in sdpa] == [
            ("Attn B-GEMM | Scale+Mask+DR+SM", "flash-attention", (8, 8, 16, 2), 2 * 2 * 8 * 8 * (16 + 16))]


@pytest.mark.parametrize("body, target, message", [
    (None, "missing.py:build", "does not exist"),
    ("def make():\n    return 1\n", "{f}:build", "defines no 'build'"),
    ("build = 3\n", "{f}:build", "not a function"),
    ("def build():\n    return [1, 2]\n", "{f}", "returned a list, not a torch.nn.Module"),
    ("def build():\n    raise RuntimeError('no\\nweights')\n", "{f}:build", "build() failed: RuntimeError: no weights"),
    ("def build(:\n", "{f}:build", "importing"),
])
def test_load_builder_errors_are_one_line(tmp_path, body, target, message):
    f = tmp_path / "user_model.py"
    if body is not None:
        f.write_text(body)
    with pytest.raises(TstackError) as e:
        load_builder(target.format(f=f) if body is not None else str(tmp_path / target))
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("preset", ["transformer-base", "memnet"])
def test_unsupported_architectures_are_clear_errors(preset):
    with pytest.raises(TstackError, match="no HuggingFace counterpart"):
        to_hf_config(load_model(preset))


def test_hf_models_of_presets_and_llama_gqa():
    cfg = to_hf_config(load_model("bert-base"))
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg._attn_implementation) == (768, 12, "eager")
    llama = ModelSpec(name="llama-tiny", arch="decoder", layers=1, hidden=H, heads=4, kv_heads=2, ffn=F, vocab=V,
                      max_positions=32, activation="silu", gated_ffn=True, norm="rmsnorm", norm_position="pre",
                      position="rotary", bias=False, head="lm", tie_embeddings=False)
    model = build_hf_model(llama)
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    p = profile_module(model, random_inputs(model, (B, S)), threads=1, warmup=0, repeats=1, setup=Setup(model=llama))
    ops = p.breakdown.ops
    assert [op.gemm_shape for op in ops if op.name == "attn.k_proj"] == [(32, T, H, 1)]  # hk·dh = 2·16 wide
    assert {"RoPE", "SiLU", "Attn B-GEMM"} <= set(p.breakdown.group_by("group"))
    # HF's eager attention repeats K/V per query head: B·h products of Sq rows, not tstack's B·hk of Sq·h/hk rows.
    assert [op.gemm_shape for op in ops if op.name == "attn.score"] == [(S, S, 16, B * 4)]


def test_sdpa_training_kernels_are_the_fused_attention_op_both_ways():
    """An SDPA model's training step: the forward call and its backward kernel each become one op with the fused
    attention labels tstack predicts, and FlopCounterMode's products (2 forward; 5 backward, scores recomputed)."""
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    llama = ModelSpec(name="llama-tiny", arch="decoder", layers=1, hidden=H, heads=4, kv_heads=4, ffn=F, vocab=V,
                      max_positions=32, activation="silu", gated_ffn=True, norm="rmsnorm", norm_position="pre",
                      position="rotary", bias=False, head="lm", tie_embeddings=False, dropout="none")
    model = build_hf_model(llama)
    model.config._attn_implementation = "sdpa"
    run = RunSpec(mode="train", batch=B, seq=S, optimizer="sgd", attention="sdpa")
    ids = torch.randint(0, V, (B, S))
    p = profile_module(model, {"input_ids": ids, "labels": ids}, threads=1, warmup=0, repeats=1,
                       setup=Setup(model=llama, run=run))
    fused = [op for op in p.breakdown.ops if op.label("fusion") == "flash-attention"]
    predicted = [op for op in build(llama, run) if op.label("fusion") == "flash-attention"]
    keys = ("group", "nlpfast", "pass", "fusion")
    assert [tuple(op.label(k) for k in keys) for op in fused] == [tuple(op.label(k) for k in keys) for op in predicted]
    q = (B, 4, S, 16)
    assert [op.flops for op in fused] == [sdpa_flop_count(q, q, q), sdpa_backward_flop_count(q, q, q, q)]


def test_a_failing_step_is_one_line():
    with pytest.raises(TstackError, match="the measured step failed: RuntimeError") as e:
        profile_module(torch.nn.Linear(8, 4), torch.randn(3, 5), threads=1, warmup=0, repeats=1)
    assert "\n" not in str(e.value)


def test_profile_preset_rejects_what_it_cannot_run():
    with pytest.raises(TstackError, match="decode"):
        profile_preset(GPT2, RunSpec(phase="decode", kv_len=4, batch=1, seq=8))
    with pytest.raises(TstackError, match="every-1"):
        profile_preset(BERT, RunSpec(mode="train", checkpoint="sqrt", batch=1, seq=8))
    with pytest.raises(TstackError, match="int8"):
        profile_preset(BERT, RunSpec(precision="int8", batch=1, seq=8), warmup=0, repeats=1)

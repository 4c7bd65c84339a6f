"""Exact import of HuggingFace configs: every field that changes a shape, checked against the model HF builds.

Each case builds a tiny transformers config object (random weights, nothing downloaded), imports its dict with
``tstack.hfconfig.from_hf_config`` and compares tstack's forward GEMM FLOPs with ``FlopCounterMode`` (matrix
products only, 2 FLOPs per multiply-add) and tstack's parameter count with ``num_parameters()``.
Causal LMs run with ``logits_to_keep=1``: the LM head on the last position, as tstack's inference counts it.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from tstack import RunSpec, build  # noqa: E402
from tstack.hfconfig import from_hf_config  # noqa: E402
from tstack.workload.layers import routed_tokens  # noqa: E402
from tstack.workload.params import param_count  # noqa: E402

B, S, POS = 2, 12, 32
COMMON = dict(bos_token_id=0, eos_token_id=0, attn_implementation="eager")


def imported(config):
    return from_hf_config(config.to_dict(), "tiny", "test")


def hf_flops(model, ids, causal: bool) -> int:
    """FlopCounterMode total of one forward pass, the rotary cos/sin set-up excluded (not a per-layer kernel)."""
    extra = {"logits_to_keep": 1} if causal else {}
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(input_ids=ids, **extra)
    rotary = sum(sum(v.values()) for k, v in counter.get_flop_counts().items() if k.endswith("rotary_emb"))
    return counter.get_total_flops() - rotary


def tstack_flops(spec, run: RunSpec) -> int:
    return sum(o.flops * o.count for o in build(spec, run) if o.is_gemm and o.label("pass") == "fwd")


def check(config, cls, causal: bool = True, run: RunSpec | None = None):
    """Import the config, build the HF model, and compare FLOPs and parameters; returns the spec."""
    spec = imported(config)
    torch.manual_seed(0)
    model = cls(config).eval()
    ids = torch.randint(2, config.vocab_size, (B, S))
    run = run or RunSpec(batch=B, seq=S)
    assert tstack_flops(spec, run) == hf_flops(model, ids, causal)
    assert param_count(spec) == model.num_parameters()
    return spec


def llama_like(cls, **kw):
    base = dict(vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=96, max_position_embeddings=POS, tie_word_embeddings=False, pad_token_id=None)
    return cls(**{**base, **COMMON, **kw})


def test_llama_explicit_head_dim():
    """head_dim 24 ≠ 64/4: Q is 96 wide, K/V 48, o_proj 96 → 64 (Mistral-Nemo style)."""
    cfg = llama_like(transformers.LlamaConfig, head_dim=24)
    spec = check(cfg, transformers.LlamaForCausalLM)
    assert (spec.head_dim, spec.q_hidden, spec.kv_hidden) == (24, 96, 48)


def test_mistral_head_dim_and_sliding_window():
    """Mistral with an explicit head_dim and a sliding window shorter than the sequence: eager attention computes
    the full score matrix and masks it, so the FLOPs are those of full attention."""
    cfg = llama_like(transformers.MistralConfig, head_dim=32, sliding_window=5)
    spec = check(cfg, transformers.MistralForCausalLM)
    assert (spec.head_dim, spec.sliding_window, spec.dropout) == (32, 5, "none")


def test_sliding_window_caps_the_keys_of_a_fused_or_decode_attention():
    cfg = llama_like(transformers.MistralConfig, sliding_window=5)
    spec = imported(cfg)
    sdpa = [o for o in build(spec, RunSpec(batch=1, seq=S, attention="sdpa")) if o.name == "attn.sdpa"]
    assert sdpa and all(o.dim("M") == 5 for o in sdpa)  # 12 queries each see at most 5 keys
    decode = [o for o in build(spec, RunSpec(batch=1, seq=1, phase="decode", kv_len=20)) if o.name == "attn.score"]
    assert decode and all(o.dim("M") == 5 for o in decode)  # the cache holds the window only


def test_qwen2_always_has_qkv_biases():
    cfg = llama_like(transformers.Qwen2Config)
    assert "attention_bias" not in cfg.to_dict() or not cfg.to_dict()["attention_bias"]
    spec = check(cfg, transformers.Qwen2ForCausalLM)
    assert (spec.bias, spec.qkv_bias) == (False, True)
    model = transformers.Qwen2ForCausalLM(cfg)
    attn = model.model.layers[0].self_attn
    assert attn.q_proj.bias is not None and attn.o_proj.bias is None


def test_llama_has_no_dropout_kernels_by_default():
    spec = imported(llama_like(transformers.LlamaConfig))
    ops = build(spec, RunSpec(mode="train", batch=B, seq=S))
    assert spec.dropout == "none" and not [o for o in ops if "dropout" in o.name]
    attn_only = imported(llama_like(transformers.LlamaConfig, attention_dropout=0.1))
    names = {o.label("group") for o in build(attn_only, RunSpec(mode="train", batch=B, seq=S)) if o.name == "dropout"}
    assert names == {"Scale+Mask+DR+SM"}  # LLaMA's only dropout is on the attention probabilities


def opt_config(**kw):
    base = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, ffn_dim=80, num_attention_heads=4,
                max_position_embeddings=POS, word_embed_proj_dim=32, do_layer_norm_before=True, pad_token_id=1)
    return transformers.OPTConfig(**{**base, **COMMON, **kw})


def test_opt_position_offset_rows():
    spec = check(opt_config(), transformers.OPTForCausalLM)
    assert (spec.position_offset, spec.embed_dim) == (2, 0)  # 34 position rows: 32 + the 2 offset rows


def test_opt_350m_style_projected_embeddings():
    """OPT-350m: word embeddings 16 wide, project_in 16→32, project_out 32→16, post-LN, LM head 16 wide."""
    cfg = opt_config(word_embed_proj_dim=16, do_layer_norm_before=False)
    spec = check(cfg, transformers.OPTForCausalLM)
    assert spec.embed_dim == 16 and spec.norm_position == "post"
    lm = [o for o in build(spec, RunSpec(batch=B, seq=S)) if o.name == "lm_head"]
    assert lm[0].gemm_shape[:3] == (64, B, 16)  # V × last tokens × word_embed_proj_dim


def roberta_config(**kw):
    base = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=80,
                max_position_embeddings=POS + 2, type_vocab_size=1, pad_token_id=1,
                architectures=["RobertaForMaskedLM"])
    return transformers.RobertaConfig(**{**base, **COMMON, **kw})


def test_roberta_masked_lm_head_follows_architectures():
    """RobertaForMaskedLM: no pooler, no NSP; its head scores every position (mlm_fraction 1)."""
    spec = check(roberta_config(), transformers.RobertaForMaskedLM, causal=False,
                 run=RunSpec(batch=B, seq=S, mlm_fraction=1.0))
    assert (spec.head, spec.max_positions, spec.position_offset) == ("mlm", POS, 2)
    names = {o.name for o in build(spec, RunSpec(batch=B, seq=S))}
    assert "pooler" not in names and "nsp" not in names and "mlm.decoder" in names


def test_bert_pretraining_mlm_fraction_is_an_explicit_option():
    """BertForPreTraining scores all positions: mlm_fraction=1 gives its FLOPs; the default 0.15 counts BERT's 15%."""
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=80, max_position_embeddings=POS,
                                  architectures=["BertForPreTraining"], **COMMON)
    spec = imported(cfg)
    assert spec.head == "bert-pretrain"
    model = transformers.BertForPreTraining(cfg).eval()
    ids = torch.randint(2, 64, (B, S))
    train_all = RunSpec(mode="train", batch=B, seq=S, mlm_fraction=1.0)
    assert tstack_flops(spec, train_all) == hf_flops(model, ids, causal=False)
    assert param_count(spec) == model.num_parameters()
    decoder = [o for o in build(spec, train_all.replace(mlm_fraction=0.15)) if o.name == "mlm.decoder"][0]
    assert decoder.dim("N") == B * 2  # ceil(0.15 · 12) = 2 positions per sequence


def test_mixtral_experts_at_routed_token_counts():
    """Mixtral: router GEMM (E × T × H) and each hit expert's gated FFN on its tokens; T·k assignments in all."""
    cfg = llama_like(transformers.MixtralConfig, num_local_experts=4, num_experts_per_tok=2,
                     experts_implementation="eager")
    spec = check(cfg, transformers.MixtralForCausalLM)
    assert (spec.experts, spec.top_k) == (4, 2)
    ops = [o for o in build(spec, RunSpec(batch=B, seq=S)) if o.name == "moe.expert.up_proj"]
    assert sum(o.dim("N") * o.count for o in ops) == 2 * B * S * 2  # 2 layers × T·k routed tokens
    assert routed_tokens(3, 8, 2) == [(1, 6)]  # 6 assignments: 6 experts get one token, 2 launch nothing


def test_qwen2_moe_shared_expert():
    cfg = llama_like(transformers.Qwen2MoeConfig, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=40,
                     shared_expert_intermediate_size=72, experts_implementation="eager")
    spec = check(cfg, transformers.Qwen2MoeForCausalLM)
    assert (spec.experts, spec.top_k, spec.ffn, spec.shared_expert_ffn, spec.qkv_bias) == (4, 2, 40, 72, True)


def test_unsupported_moe_layout_names_the_fields():
    from tstack.errors import SpecError

    data = llama_like(transformers.Qwen2MoeConfig, decoder_sparse_step=2).to_dict()
    with pytest.raises(SpecError, match="decoder_sparse_step=2"):
        from_hf_config(data, "tiny", "test")


def test_opt_350m_full_size_parameters_on_the_meta_device():
    """OPT-350m's published shapes: 331,196,416 parameters (the issue saw +7.45% before project_in/out were read)."""
    cfg = transformers.OPTConfig(hidden_size=1024, word_embed_proj_dim=512, num_hidden_layers=24, ffn_dim=4096,
                                 num_attention_heads=16, vocab_size=50272, max_position_embeddings=2048,
                                 do_layer_norm_before=False)
    with torch.device("meta"):
        model = transformers.OPTForCausalLM(cfg)
    # embeddings 50272·512 + positions 2050·1024 + project_in/out 2·512·1024 + 24 layers × 12,596,224
    assert param_count(imported(cfg)) == model.num_parameters() == 331_196_416

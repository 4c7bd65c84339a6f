"""Offline import of HuggingFace config.json files: BERT/RoBERTa, GPT-2, OPT, LLaMA-style decoders (Mistral, Qwen2)
and their Mixture-of-Experts forms (Mixtral, Qwen2-MoE). Every field that changes a shape is read."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tstack.errors import SpecError
from tstack.loader import show
from tstack.spec import ModelSpec

_ACT = {"gelu": "gelu", "gelu_new": "gelu-tanh", "gelu_pytorch_tanh": "gelu-tanh", "gelu_fast": "gelu-tanh",
        "relu": "relu", "silu": "silu", "swish": "silu"}


class _Reader:
    """Reads typed fields of a config, collecting every problem for one error."""

    def __init__(self, data: dict[str, Any], where: str) -> None:
        self.data, self.where, self.problems = data, where, []

    def int(self, key: str, default: int | None = None) -> int:
        v = self.data.get(key, default)
        if v is None or isinstance(v, bool) or not isinstance(v, int):
            self.problems.append(f"{key}={show(v)} must be an integer" if key in self.data else f"missing field {key!r}")
            return 1
        return v

    def flag(self, key: str, default: bool) -> bool:
        """A true/false field; absent or null means ``default``."""
        v = self.data.get(key)
        if v is None:
            return default
        if not isinstance(v, bool):
            self.problems.append(f"{key}={show(v)} must be true or false")
            return default
        return v

    def kv_heads(self, heads_key: str) -> int:
        """num_key_value_heads: absent or null means multi-head (one K/V head per query head); else ≥ 1 and
        dividing the query heads (0 must not silently mean multi-head)."""
        heads, raw = self.data.get(heads_key), self.data.get("num_key_value_heads")
        if raw is None:
            return 0  # ModelSpec: kv_heads 0 means "same as heads"
        kv = self.int("num_key_value_heads")  # a problem unless an integer
        if type(raw) is int and (kv < 1 or (type(heads) is int and heads >= 1 and heads % kv)):
            self.problems.append(f"num_key_value_heads={show(kv)} must be a positive integer dividing "
                                 f"{heads_key}={show(heads)}")
        return kv

    def optional_int(self, key: str) -> int:
        """A positive integer field; absent or null means 0 (the ModelSpec default)."""
        if self.data.get(key) is None:
            return 0
        v = self.int(key)
        if v < 1:
            self.problems.append(f"{key}={show(v)} must be a positive integer or null")
        return v

    def act(self, key: str, default: str) -> str:
        v = self.data.get(key, default)
        if not isinstance(v, str) or v not in _ACT:
            self.problems.append(f"{key}={show(v)} is not one of {', '.join(_ACT)}")
            return "gelu"
        return _ACT[v]

    def done(self) -> None:
        if self.problems:
            raise SpecError(self.problems, self.where)


def _bert(r: _Reader, name: str) -> ModelSpec:
    H = r.int("hidden_size")
    fields = dict(layers=r.int("num_hidden_layers"), hidden=H, heads=r.int("num_attention_heads"),
                  ffn=r.int("intermediate_size"), vocab=r.int("vocab_size"),
                  max_positions=r.int("max_position_embeddings", 512), type_vocab=r.int("type_vocab_size", 2),
                  activation=r.act("hidden_act", "gelu"))
    r.done()
    # The head follows the architecture: masked-LM checkpoints (all of RoBERTa's) have no pooler and no NSP.
    archs = r.data.get("architectures") or []
    mlm = r.data.get("model_type") != "bert" or any(isinstance(a, str) and "MaskedLM" in a for a in archs)
    return ModelSpec(name=name, arch="encoder", norm="layernorm", norm_position="post", position="learned",
                     head="mlm" if mlm else "bert-pretrain", **fields)


def _gpt2(r: _Reader, name: str) -> ModelSpec:
    H = r.int("n_embd")
    inner = r.data.get("n_inner")
    fields = dict(layers=r.int("n_layer"), hidden=H, heads=r.int("n_head"),
                  ffn=r.int("n_inner") if inner is not None else 4 * H, vocab=r.int("vocab_size"),
                  max_positions=r.int("n_positions", 1024), activation=r.act("activation_function", "gelu_new"))
    r.done()
    return ModelSpec(name=name, arch="decoder", norm="layernorm", norm_position="pre", position="learned",
                     head="lm", default_seq=min(1024, fields["max_positions"]), **fields)


def _opt(r: _Reader, name: str) -> ModelSpec:
    fields = dict(layers=r.int("num_hidden_layers"), hidden=r.int("hidden_size"), heads=r.int("num_attention_heads"),
                  ffn=r.int("ffn_dim"), vocab=r.int("vocab_size"),
                  max_positions=r.int("max_position_embeddings", 2048), activation=r.act("activation_function", "relu"))
    pre, tie = r.flag("do_layer_norm_before", True), r.flag("tie_word_embeddings", True)
    proj = r.optional_int("word_embed_proj_dim")
    bias = r.flag("enable_bias", True)
    r.done()
    # OPT's position table holds 2 offset rows beyond max_position_embeddings (OPTLearnedPositionalEmbedding).
    return ModelSpec(name=name, arch="decoder", norm="layernorm", norm_position="pre" if pre else "post",
                     position="learned", head="lm", tie_embeddings=tie, bias=bias, position_offset=2,
                     embed_dim=0 if proj == fields["hidden"] else proj,
                     default_seq=min(2048, fields["max_positions"]), **fields)


def _llama(r: _Reader, name: str) -> ModelSpec:
    """LLaMA, Mistral, Qwen2, Mixtral and Qwen2-MoE: RMSNorm, rotary, gated FFN, optional experts."""
    mt = r.data["model_type"]
    heads = r.int("num_attention_heads")
    fields = dict(layers=r.int("num_hidden_layers"), hidden=r.int("hidden_size"), heads=heads,
                  kv_heads=r.kv_heads("num_attention_heads"), head_dim=r.optional_int("head_dim"),
                  ffn=r.int("intermediate_size"), vocab=r.int("vocab_size"),
                  max_positions=r.int("max_position_embeddings", 4096), activation=r.act("hidden_act", "silu"))
    tie = r.flag("tie_word_embeddings", False)
    if mt in ("qwen2", "qwen2_moe"):  # Qwen2 attention: q/k/v with biases, o_proj without; no MLP biases
        bias, qkv_bias = False, True
        if r.flag("use_sliding_window", False):
            r.problems.append("use_sliding_window=true (a window on some layers, max_window_layers) is not supported")
        window = 0
    else:
        bias, qkv_bias = r.flag("attention_bias", False), False
        if bias != r.flag("mlp_bias", False):
            r.problems.append(f"attention_bias={show(bias)} with mlp_bias={show(not bias)} is not supported "
                              "(biases on all Linear layers or none)")
        window = r.optional_int("sliding_window") if mt in ("mistral", "mixtral") else 0
    if mt == "mixtral":
        fields.update(experts=r.int("num_local_experts"), top_k=r.int("num_experts_per_tok"))
    elif mt == "qwen2_moe":
        fields.update(experts=r.int("num_experts"), top_k=r.int("num_experts_per_tok"), ffn=r.int("moe_intermediate_size"),
                      shared_expert_ffn=r.optional_int("shared_expert_intermediate_size"))
        if r.data.get("decoder_sparse_step", 1) != 1 or r.data.get("mlp_only_layers"):
            r.problems.append(f"decoder_sparse_step={show(r.data.get('decoder_sparse_step'))} and mlp_only_layers="
                              f"{show(r.data.get('mlp_only_layers'))}: only all-sparse layers (1 and []) are supported")
    dropout = r.data.get("attention_dropout", 0.0)
    if not isinstance(dropout, (int, float)) or isinstance(dropout, bool):
        r.problems.append(f"attention_dropout={show(dropout)} must be a number")
        dropout = 0.0
    r.done()
    return ModelSpec(name=name, arch="decoder", norm="rmsnorm", norm_position="pre", position="rotary", head="lm",
                     gated_ffn=True, bias=bias, qkv_bias=qkv_bias, tie_embeddings=tie, sliding_window=window,
                     dropout="attention" if dropout > 0 else "none",
                     default_seq=min(2048, fields["max_positions"]), **fields)


_TYPES: dict[str, Callable[[_Reader, str], ModelSpec]] = {
    "bert": _bert, "roberta": _bert, "xlm-roberta": _bert, "gpt2": _gpt2, "opt": _opt,
    "llama": _llama, "mistral": _llama, "qwen2": _llama, "mixtral": _llama, "qwen2_moe": _llama,
}


def from_hf_config(data: dict[str, Any], name: str, where: str) -> ModelSpec:
    """ModelSpec of a HuggingFace config dict (no network, no transformers import)."""
    mt = data.get("model_type")
    if not isinstance(mt, str) or mt not in _TYPES:
        raise SpecError([f"model_type={show(mt)} is not supported (supported: {', '.join(_TYPES)})"], where)
    spec = _TYPES[mt](_Reader(data, where), name)
    if mt in ("roberta", "xlm-roberta"):
        # RoBERTa's position table holds pad_token_id + 1 offset rows beyond the usable positions.
        r = _Reader(data, where)
        offset = r.int("pad_token_id", 1) + 1
        r.done()
        usable = spec.max_positions - offset
        spec = spec.replace(max_positions=max(1, usable), position_offset=spec.max_positions - max(1, usable))
    return spec

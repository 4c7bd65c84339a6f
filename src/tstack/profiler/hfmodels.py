"""HuggingFace models for measured runs: built from a ModelSpec (random weights, no download), user builders, and the
map from HF module paths (``encoder.layer.3.attention.self.query``) onto tstack's labels."""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from tstack.errors import TstackError
from tstack.profiler.scopes import Attribution, Kernel, Labeler, Scope, generic_labels
from tstack.spec import ModelSpec
from tstack.workload.labels import (
    ATTN_BGEMM,
    ATTN_CONTEXT,
    ATTN_OUT_PROJ,
    ATTN_SCORE,
    DR_RC_LN,
    EMBEDDING,
    FC_GEMM,
    FFN_FC1,
    FFN_FC2,
    FUSED_ATTENTION,
    FUSED_ATTENTION_GROUP,
    FUSED_ATTENTION_NLPFAST,
    GELU,
    LINEAR_GEMM,
    SCALE_MASK_SM,
    SDPA,
)
from tstack.workload.op import OpKind

_BERT_ACT = {"gelu": "gelu", "gelu-tanh": "gelu_new", "relu": "relu", "silu": "silu"}
_GPT2_ACT = {"gelu": "gelu", "gelu-tanh": "gelu_new", "relu": "relu", "silu": "silu"}
_LLAMA_ACT = {"gelu": "gelu", "gelu-tanh": "gelu_pytorch_tanh", "relu": "relu", "silu": "silu"}
SUPPORTED = ("BERT-style encoders (post-LN LayerNorm, learned positions), GPT-2-style decoders (pre-LN LayerNorm, learned "
             "positions) and LLaMA-style decoders (RMSNorm, rotary positions, gated FFN)")


def _family(spec: ModelSpec) -> str:
    """'bert', 'gpt2' or 'llama': the HF family whose kernels match the spec; a TstackError otherwise."""
    s = spec
    if s.experts or s.embed_dim or s.sliding_window:
        raise TstackError(f"model {s.name!r}: Mixture-of-Experts, projected-embedding (OPT-350m) and sliding-window "
                          "models are imported and predicted but not profiled as HuggingFace modules")
    if s.arch == "encoder" and (s.norm, s.norm_position, s.position, s.gated_ffn, s.bias) == ("layernorm", "post", "learned",
                                                                                              False, True):
        if s.kv_heads == s.heads and s.head_dim * s.heads == s.hidden and s.head in ("bert-pretrain", "mlm", "none"):
            return "bert"
    if s.arch == "decoder" and s.head in ("lm", "none") and s.norm_position == "pre":
        if ((s.norm, s.position, s.gated_ffn, s.bias) == ("layernorm", "learned", False, True) and s.kv_heads == s.heads
                and s.head_dim * s.heads == s.hidden):
            return "gpt2"
        if (s.norm, s.position, s.gated_ffn) == ("rmsnorm", "rotary", True):
            return "llama"
    raise TstackError(f"model {s.name!r} (arch {s.arch}, {s.norm}/{s.norm_position}-norm, {s.position} positions, head "
                      f"{s.head}) has no HuggingFace counterpart to profile; supported: {SUPPORTED}")


def to_hf_config(spec: ModelSpec, dropout: bool = True) -> Any:
    """The transformers config of the same shapes, eager attention (explicit score and context matmuls)."""
    import transformers

    fam = _family(spec)
    if fam == "bert":
        p = 0.1 if dropout else 0.0
        return transformers.BertConfig(
            vocab_size=spec.vocab, hidden_size=spec.hidden, num_hidden_layers=spec.layers, num_attention_heads=spec.heads,
            intermediate_size=spec.ffn, hidden_act=_BERT_ACT[spec.activation], max_position_embeddings=spec.max_positions,
            type_vocab_size=max(1, spec.type_vocab), hidden_dropout_prob=p, attention_probs_dropout_prob=p,
            pad_token_id=0, attn_implementation="eager")
    if fam == "gpt2":
        p = 0.1 if dropout else 0.0
        return transformers.GPT2Config(
            vocab_size=spec.vocab, n_embd=spec.hidden, n_layer=spec.layers, n_head=spec.heads, n_inner=spec.ffn,
            n_positions=spec.max_positions, activation_function=_GPT2_ACT[spec.activation], resid_pdrop=p, embd_pdrop=p,
            attn_pdrop=p, bos_token_id=0, eos_token_id=0, tie_word_embeddings=spec.tie_embeddings,
            attn_implementation="eager")
    # Q/K/V biases without the others are Qwen2's attention; LLaMA's biases are all or none.
    cls = transformers.Qwen2Config if spec.qkv_bias and not spec.bias else transformers.LlamaConfig
    bias = {} if cls is transformers.Qwen2Config else {"attention_bias": spec.bias, "mlp_bias": spec.bias}
    return cls(
        vocab_size=spec.vocab, hidden_size=spec.hidden, num_hidden_layers=spec.layers, num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads, head_dim=spec.head_dim, intermediate_size=spec.ffn,
        hidden_act=_LLAMA_ACT[spec.activation], max_position_embeddings=spec.max_positions,
        tie_word_embeddings=spec.tie_embeddings, attention_dropout=0.1 if dropout and spec.dropout != "none" else 0.0,
        bos_token_id=0, eos_token_id=0, pad_token_id=None, attn_implementation="eager", **bias)


def build_hf_model(spec: ModelSpec, seed: int = 0, training: bool = False, dropout: bool = True) -> torch.nn.Module:
    """A randomly initialised transformers model of the spec's shapes (nothing is downloaded).

    BERT: BertModel with its pooler for inference (tstack's bert-pretrain inference head is the pooler),
    BertForPreTraining (MLM + NSP heads) for training; decoders: GPT2LMHeadModel / LlamaForCausalLM
    (their bare models for head 'none').
    """
    import transformers

    fam, config = _family(spec), to_hf_config(spec, dropout)
    if fam == "bert":
        cls = transformers.BertForPreTraining if training and spec.head == "bert-pretrain" else transformers.BertModel
        if spec.head == "mlm":
            cls = transformers.BertForMaskedLM  # no pooler, no NSP
        kwargs = {} if cls is not transformers.BertModel else {"add_pooling_layer": spec.head == "bert-pretrain"}
    else:
        lm = spec.head == "lm"
        cls = {"gpt2": (transformers.GPT2Model, transformers.GPT2LMHeadModel),
               "llama": (transformers.LlamaModel, transformers.LlamaForCausalLM)}[fam][lm]
        if isinstance(config, transformers.Qwen2Config):
            cls = (transformers.Qwen2Model, transformers.Qwen2ForCausalLM)[lm]
        kwargs = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config, **kwargs)
    return model.train(training)


def load_builder(target: str) -> torch.nn.Module:
    """Import ``path/to/file.py:function`` (function defaults to ``build``) and call it; it must return an nn.Module."""
    path_s, _, func = target.rpartition(":") if ":" in target else (target, "", "build")
    func = func or "build"
    path = Path(path_s)
    where = f"builder {target!r}"
    if not path.is_file():
        raise TstackError(f"{where}: file {path_s!r} does not exist")
    name = "tstack_builder_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise TstackError(f"{where}: {path_s!r} cannot be imported as a Python file")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # so that dataclasses and pickling inside the user's file work
    try:
        spec.loader.exec_module(mod)
    except BaseException as e:  # any failure of the user's file (SystemExit included) becomes one line
        sys.modules.pop(name, None)
        if isinstance(e, KeyboardInterrupt):
            raise
        raise TstackError(f"{where}: importing {path_s!r} failed: {_one_line(e)}") from None
    fn = getattr(mod, func, None)
    if fn is None:
        raise TstackError(f"{where}: {path_s!r} defines no {func!r}")
    if not callable(fn):
        raise TstackError(f"{where}: {func!r} is a {type(fn).__name__}, not a function")
    try:
        module = fn()
    except Exception as e:
        raise TstackError(f"{where}: {func}() failed: {_one_line(e)}") from None
    if not isinstance(module, torch.nn.Module):
        raise TstackError(f"{where}: {func}() returned a {type(module).__name__}, not a torch.nn.Module")
    return module


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def random_inputs(module: torch.nn.Module, shape: Sequence[int], seed: int = 0) -> dict[str, torch.Tensor] | tuple:
    """Inputs for one forward: token ids in range for models with a vocabulary (HF config or a first nn.Embedding),
    else a float tensor of ``shape``, on the module's device."""
    params = next(module.parameters(), None)
    device = params.device if params is not None else torch.device("cpu")
    g = torch.Generator().manual_seed(seed)
    vocab = getattr(getattr(module, "config", None), "vocab_size", None)
    if vocab is None:
        emb = next((m for m in module.modules() if isinstance(m, torch.nn.Embedding)), None)
        vocab = emb.num_embeddings if emb is not None else None
    if vocab:
        ids = torch.randint(0, vocab, tuple(shape), generator=g).to(device)
        return {"input_ids": ids} if hasattr(module, "config") else (ids,)
    dtype = params.dtype if params is not None and params.is_floating_point() else torch.float32
    return (torch.randn(tuple(shape), generator=g).to(device=device, dtype=dtype),)


def accepts(module: torch.nn.Module, name: str) -> bool:
    """Whether the module's forward takes a keyword argument of this name."""
    try:
        return name in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False


# ---------------------------------------------------------------------------------------------------------------------
# HF module paths -> tstack labels
# ---------------------------------------------------------------------------------------------------------------------
def _l(block: str, group: str, nlp: str, part: str = "transformer") -> dict[str, str]:
    return {"part": part, "block": block, "group": group, "nlpfast": nlp}


QGEN, KVGEN = _l("attention", LINEAR_GEMM, "Q-Gen"), _l("attention", LINEAR_GEMM, "K/V-Gen")
ATTN_FC = _l("attention", LINEAR_GEMM, "attention FC")
SCORE, CONTEXT = _l("attention", ATTN_BGEMM, "dot product"), _l("attention", ATTN_BGEMM, "weighted sum")
SM = _l("attention", SCALE_MASK_SM, "softmax")
FUSED = {**_l("attention", FUSED_ATTENTION_GROUP, FUSED_ATTENTION_NLPFAST), "fusion": FUSED_ATTENTION}
FC1, FC2 = _l("fc", FC_GEMM, "linear trans-1"), _l("fc", FC_GEMM, "linear trans-2")
ADDNORM = _l(DR_RC_LN, DR_RC_LN, "layernorm/residual")
EMBEDDING = _l("embedding", EMBEDDING, "embedding", "embedding")
OUTPUT = _l("output", "Output", "output", "output")
SETUP = _l("other", "Setup", "other", "other")

# Scopes inside one layer, by path below the layer index: (labels or a handler, op name of its GEMM).
# Handlers: 'attn' (score/context B-GEMMs in order, Scale+Mask+DR+SM between, RoPE before), 'qkv' (fused Q/K/V
# projection split in three), 'act' (activation), 'body' (residual adds of a layer or block), 'gate' (gated-FFN product).
_LAYER: dict[str, tuple[dict[str, str] | str, str]] = {
    # BERT, RoBERTa
    "attention.self.query": (QGEN, "attn.q_proj"), "attention.self.key": (KVGEN, "attn.k_proj"),
    "attention.self.value": (KVGEN, "attn.v_proj"), "attention.self": ("attn", ""), "attention.self.dropout": (SM, ""),
    "attention.output.dense": (ATTN_FC, ATTN_OUT_PROJ), "attention.output": (ADDNORM, ""),
    "attention.output.dropout": (ADDNORM, ""), "attention.output.LayerNorm": (ADDNORM, ""), "attention": ("body", ""),
    "intermediate.dense": (FC1, FFN_FC1), "intermediate": ("act", ""), "intermediate.intermediate_act_fn": ("act", ""),
    "output.dense": (FC2, FFN_FC2), "output": (ADDNORM, ""), "output.dropout": (ADDNORM, ""),
    "output.LayerNorm": (ADDNORM, ""), "": ("body", ""),
    # GPT-2
    "ln_1": (ADDNORM, ""), "ln_2": (ADDNORM, ""), "attn.c_attn": ("qkv", ""), "attn": ("attn", ""),
    "attn.attn_dropout": (SM, ""), "attn.c_proj": (ATTN_FC, ATTN_OUT_PROJ), "attn.resid_dropout": (ADDNORM, ""),
    "mlp.c_fc": (FC1, FFN_FC1), "mlp.act": ("act", ""), "mlp.c_proj": (FC2, FFN_FC2), "mlp.dropout": (ADDNORM, ""),
    "mlp": ("gate", ""),
    # LLaMA, Mistral, Qwen2
    "input_layernorm": (ADDNORM, ""), "post_attention_layernorm": (ADDNORM, ""),
    "self_attn.q_proj": (QGEN, "attn.q_proj"), "self_attn.k_proj": (KVGEN, "attn.k_proj"),
    "self_attn.v_proj": (KVGEN, "attn.v_proj"), "self_attn": ("attn", ""), "self_attn.o_proj": (ATTN_FC, ATTN_OUT_PROJ),
    "mlp.gate_proj": (FC1, "ffn.gate_proj"), "mlp.up_proj": (FC1, "ffn.up_proj"), "mlp.act_fn": ("act", ""),
    "mlp.down_proj": (FC2, FFN_FC2),
}
# Scopes outside the layers, by full path: (pattern, labels, op name of its GEMM or lookup).
_OUTER: tuple[tuple[re.Pattern[str], dict[str, str], str], ...] = tuple((re.compile(p), lab, name) for p, lab, name in (
    (r"(^|\.)(embeddings\.word_embeddings|wte|embed_tokens)$", EMBEDDING, "word_embeddings"),
    (r"(^|\.)(embeddings\.position_embeddings|wpe)$", EMBEDDING, "position_embeddings"),
    (r"(^|\.)embeddings\.token_type_embeddings$", EMBEDDING, "token_type_embeddings"),
    (r"(^|\.)embeddings(\.|$)|^(transformer\.)?drop$", EMBEDDING, ""),
    (r"(^|\.)pooler\.dense$", OUTPUT, "pooler"),
    (r"(^|\.)cls\.predictions\.transform\.dense$", OUTPUT, "mlm.dense"),
    (r"(^|\.)cls\.predictions\.decoder$", OUTPUT, "mlm.decoder"),
    (r"(^|\.)cls\.seq_relationship$", OUTPUT, "nsp"),
    (r"(^|\.)lm_head$", OUTPUT, "lm_head"),
    (r"(^|\.)(pooler|cls|ln_f|norm)(\.|$)", OUTPUT, ""),
    (r"(^|\.)rotary_emb$", _l("embedding", "RoPE", "embedding", "embedding"), ""),  # cos/sin tables, once per pass
))
_BACKBONES = re.compile(r"^(Bert|Roberta|XLMRoberta|GPT2|Llama|Mistral|Qwen2)Model$")
_HEADED = re.compile(r"^(Bert|Roberta|XLMRoberta|GPT2|Llama|Mistral|Qwen2)(For\w+|LMHeadModel)$")


def _act_labels(module: torch.nn.Module) -> dict[str, str]:
    """GeLU, ReLU or SiLU activation labels from the model's config (002 groups them by function)."""
    cfg = getattr(module, "config", None)
    act = str(getattr(cfg, "hidden_act", None) or getattr(cfg, "activation_function", None) or "gelu").lower()
    group = "SiLU" if ("silu" in act or "swish" in act) else "ReLU" if "relu" in act else GELU
    return _l("fc", group, "activation")


def hf_labeler(module: torch.nn.Module) -> Labeler | None:
    """Labeler for modules holding a BERT/RoBERTa, GPT-2 or LLaMA-style HF model (None for others); scopes it does not
    know fall back to the generic labels."""
    if not any(_BACKBONES.match(type(m).__name__) for m in module.modules()):
        return None
    hidden = getattr(getattr(module, "config", None), "hidden_size", 0)
    act = _act_labels(module)

    def label(scope: Scope, items: Sequence[Kernel | Scope]) -> list[tuple[Attribution, ...]]:
        kernels = [k for k in items if isinstance(k, Kernel)]
        if scope.layer != "-":
            rule = _LAYER.get(scope.local)
            if rule is None:
                return generic_labels(scope, items)
            labels, name = rule
            if isinstance(labels, str):
                return _HANDLERS[labels](scope, items, act)
            return [(_attr(scope, labels, name, k),) for k in kernels]
        for pattern, labels, name in _OUTER:
            if pattern.search(scope.path):
                return [(_attr(scope, labels, name, k),) for k in kernels]
        if _HEADED.match(scope.cls):
            return [(_attr(scope, OUTPUT, "", k),) for k in kernels]
        if _BACKBONES.match(scope.cls):
            return _backbone(scope, items, hidden)
        return generic_labels(scope, items)

    return label


def _attr(scope: Scope, labels: dict[str, str], name: str, k: Kernel, split: int = 1) -> Attribution:
    """The rule's labels at the scope's layer; ``name`` names the kernel when it is the GEMM or lookup (see module._op)."""
    return Attribution(name, {"layer": scope.layer, **labels}, split)


def _layout(block: str) -> dict[str, str]:
    return _l(block, "Layout", "other")


def _attention(scope: Scope, items: Sequence[Kernel | Scope], act: dict[str, str]) -> list[tuple[Attribution, ...]]:
    """Score and context B-GEMMs by order; Scale+Mask+DR+SM between them; RoPE (Q then K) before; reshapes as Layout."""
    kernels = [k for k in items if isinstance(k, Kernel)]
    gemm_at = [i for i, k in enumerate(kernels) if k.is_gemm]
    first = gemm_at[0] if gemm_at else len(kernels)
    rope = [i for i in range(first) if kernels[i].kind == OpKind.ELEMENTWISE]
    adds = [i for i in rope if kernels[i].aten == "aten::add"]
    q_end = adds[0] if adds else (rope[-1] if rope else -1)
    k_end = adds[1] if len(adds) > 1 else q_end
    out = []
    for i, k in enumerate(kernels):
        n = sum(1 for g in gemm_at if g <= i)  # GEMMs so far, this one included
        if k.aten.startswith(("aten::scaled_dot_product", "aten::_scaled_dot_product")):  # one fused kernel: Q·Kᵀ, softmax, P·V
            out.append((_attr(scope, FUSED, f"attn.{SDPA}", k),))
        elif i in gemm_at and n <= 2:
            out.append((_attr(scope, SCORE if n == 1 else CONTEXT, ATTN_SCORE if n == 1 else ATTN_CONTEXT, k),))
        elif i in gemm_at:
            out.append(generic_labels(scope, [k])[0])
        elif rope and rope[0] <= i <= k_end:
            out.append((_attr(scope, _l("attention", "RoPE", "Q-Gen" if i <= q_end else "K/V-Gen"), "", k),))
        elif n == 1 and (k.kind != OpKind.COPY or k.aten == "aten::to"):  # between the two: scale, mask, softmax, dropout
            out.append((_attr(scope, SM, "", k),))
        else:
            out.append((_attr(scope, _layout("attention"), "", k),))
    return out


def _fused_qkv(scope: Scope, items: Sequence[Kernel | Scope], act: dict[str, str]) -> list[tuple[Attribution, ...]]:
    """GPT-2's c_attn computes Q, K and V in one GEMM of width 3H: one third of its work to each."""
    parts = ((QGEN, "attn.q_proj"), (KVGEN, "attn.k_proj"), (KVGEN, "attn.v_proj"))
    return [tuple(_attr(scope, lab, name, k, 3) for lab, name in parts) if k.kind == OpKind.GEMM
            else (_attr(scope, _layout("attention"), "", k),) for k in items if isinstance(k, Kernel)]


def _activation(scope: Scope, items: Sequence[Kernel | Scope], act: dict[str, str]) -> list[tuple[Attribution, ...]]:
    return [(_attr(scope, act, "", k),) for k in items if isinstance(k, Kernel)]


def _body(scope: Scope, items: Sequence[Kernel | Scope], act: dict[str, str]) -> list[tuple[Attribution, ...]]:
    """Ops of a layer (or attention block) itself: the residual adds; reshapes as Layout."""
    return [(_attr(scope, ADDNORM if k.kind != OpKind.COPY else _layout(DR_RC_LN), "", k),)
            for k in items if isinstance(k, Kernel)]


def _gate(scope: Scope, items: Sequence[Kernel | Scope], act: dict[str, str]) -> list[tuple[Attribution, ...]]:
    """Ops of an MLP block itself: the act(gate)·up product of a gated FFN belongs to the activation."""
    return [(_attr(scope, act if k.kind != OpKind.COPY else _layout("fc"), "", k),) for k in items if isinstance(k, Kernel)]


_HANDLERS: dict[str, Callable[[Scope, Sequence[Kernel | Scope], dict[str, str]], list[tuple[Attribution, ...]]]] = {
    "attn": _attention, "qkv": _fused_qkv, "act": _activation, "body": _body, "gate": _gate,
}


def _backbone(scope: Scope, items: Sequence[Kernel | Scope], hidden: int) -> list[tuple[Attribution, ...]]:
    """Ops of BertModel/GPT2Model/LlamaModel itself: hidden-state ops before the first layer are embedding (GPT-2's
    word + position sum), after the last layer output; position ids and attention masks are Setup."""
    layer_at = [i for i, it in enumerate(items) if isinstance(it, Scope) and it.layer != "-"]
    out = []
    for i, k in enumerate(items):
        if not isinstance(k, Kernel):
            continue
        hidden_state = bool(hidden) and any(len(s) >= 2 and s[-1] == hidden for s in k.shapes)
        if hidden_state and (not layer_at or i < layer_at[0]):
            labels = EMBEDDING
        elif hidden_state and i > layer_at[-1]:
            labels = OUTPUT
        else:
            labels = SETUP
        out.append((_attr(scope, labels, "", k),))
    return out

"""ModelSpec and RunSpec: frozen, validated at construction, loaded from preset data files.

Names follow the papers: N layers, H (d_model) hidden, F (d_ff) feed-forward, h heads,
B batch, S (n) sequence length.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tstack import checks
from tstack.errors import SpecError
from tstack.loader import show, unknown_fields

ARCHS = ("encoder", "decoder", "enc-dec", "memnet")
ACTIVATIONS = ("gelu", "gelu-tanh", "relu", "silu")
NORMS = ("layernorm", "rmsnorm")
NORM_POSITIONS = ("post", "pre")
POSITIONS = ("learned", "sinusoidal", "rotary", "none")
HEADS = ("bert-pretrain", "mlm", "lm", "memnet-answer", "none")
DROPOUTS = ("all", "attention", "none")  # where the model has dropout layers (LLaMA family: none)
MODES = ("infer", "train")
PRECISIONS = ("fp32", "tf32", "fp16-mixed", "bf16-mixed", "int8")
EXECUTIONS = ("eager", "graphs")  # eager: one launch per kernel and framework copies; graphs: CUDA graphs / compiled
ATTENTIONS = ("unfused", "sdpa")  # unfused: score matrix in memory; sdpa: a fused (flash) attention kernel
OPTIMIZERS = ("lamb", "adam", "sgd")
PHASES = ("prefill", "decode")
_CHECKPOINT_RE = re.compile(r"^(none|sqrt|every-([1-9][0-9]*))$")

# Upper bounds: generous for any real model, small enough to catch typos and overflow.
MAX_LAYERS = 10_000
MAX_HIDDEN = 1 << 20
MAX_FFN = 1 << 22
MAX_VOCAB = 1 << 24
MAX_POSITIONS = 1 << 31
MAX_BATCH = 1 << 24
MAX_SEQ = 1 << 31  # a memory network's "sequence" is its memory size (10^8 slots in 003 Table IV)


@dataclass(frozen=True)
class ModelSpec:
    """Shape of a Transformer-family model; validated when constructed."""

    name: str
    arch: str
    layers: int
    hidden: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int = 512
    kv_heads: int = 0  # 0 means "same as heads" (no grouped-query attention)
    decoder_layers: int = 0  # enc-dec only
    activation: str = "gelu"
    gated_ffn: bool = False
    type_vocab: int = 0
    norm: str = "layernorm"
    norm_position: str = "post"
    position: str = "learned"
    bias: bool = True
    head: str = "bert-pretrain"
    tie_embeddings: bool = True
    hops: int = 0  # memnet only
    head_dim: int = 0  # 0 means hidden / heads; explicit in Mistral-Nemo-style configs
    embed_dim: int = 0  # word-embedding width when projected to hidden (OPT-350m word_embed_proj_dim); 0: none
    position_offset: int = 0  # extra rows of a learned position table (OPT: 2, RoBERTa: pad_token_id + 1)
    qkv_bias: bool = False  # Q/K/V projections carry biases even when bias is false (Qwen2)
    dropout: str = ""  # "" means the family's: none for RMSNorm gated (LLaMA-family) models, all otherwise
    experts: int = 0  # Mixture-of-Experts feed-forward: experts per layer (0: dense); ffn is each expert's width
    top_k: int = 0  # experts each token is routed to
    shared_expert_ffn: int = 0  # Qwen-MoE shared expert width (0: none), gated by a sigmoid of a 1-wide Linear
    sliding_window: int = 0  # attention window in tokens (0: full attention)
    default_seq: int = 128
    description: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        if type(self.kv_heads) is int and self.kv_heads == 0 and isinstance(self.heads, int):  # not False, not 0.0
            object.__setattr__(self, "kv_heads", self.heads)
        if type(self.head_dim) is int and self.head_dim == 0 and _positive(self.hidden) and _positive(self.heads):
            object.__setattr__(self, "head_dim", self.hidden // self.heads if self.hidden % self.heads == 0 else 0)
        if self.dropout == "":
            object.__setattr__(self, "dropout", "none" if (self.norm, self.gated_ffn) == ("rmsnorm", True) else "all")
        problems: list[str] = []
        for name in ("name", "description", "source"):
            if not isinstance(getattr(self, name), str):
                problems.append(f"{name}={show(getattr(self, name))} must be a string")
        checks.choice(problems, "arch", self.arch, ARCHS)
        checks.integer(problems, "layers", self.layers, 1, MAX_LAYERS)
        checks.integer(problems, "hidden", self.hidden, 1, MAX_HIDDEN)
        checks.integer(problems, "heads", self.heads, 1, MAX_HIDDEN)
        checks.integer(problems, "kv_heads", self.kv_heads, 1, MAX_HIDDEN)
        checks.integer(problems, "ffn", self.ffn, 1, MAX_FFN)
        checks.integer(problems, "vocab", self.vocab, 1, MAX_VOCAB)
        checks.integer(problems, "max_positions", self.max_positions, 1, MAX_POSITIONS)
        checks.integer(problems, "type_vocab", self.type_vocab, 0, MAX_VOCAB)
        checks.integer(problems, "default_seq", self.default_seq, 1, MAX_SEQ)
        checks.choice(problems, "activation", self.activation, ACTIVATIONS)
        checks.choice(problems, "norm", self.norm, NORMS)
        checks.choice(problems, "norm_position", self.norm_position, NORM_POSITIONS)
        checks.choice(problems, "position", self.position, POSITIONS)
        checks.choice(problems, "head", self.head, HEADS)
        checks.choice(problems, "dropout", self.dropout, DROPOUTS)
        for name, hi in (("embed_dim", MAX_HIDDEN), ("position_offset", MAX_POSITIONS), ("experts", 1 << 16),
                         ("top_k", 1 << 16), ("shared_expert_ffn", MAX_FFN), ("sliding_window", MAX_SEQ)):
            checks.integer(problems, name, getattr(self, name), 0, hi)
        for name in ("gated_ffn", "bias", "tie_embeddings", "qkv_bias"):
            checks.flag(problems, name, getattr(self, name))
        if not problems:
            self._check_relations(problems)
        if problems:
            raise SpecError(problems, f"model {show(self.name, 40)}")

    def _check_relations(self, problems: list[str]) -> None:
        if self.head_dim == 0:
            problems.append(f"heads={self.heads} must divide hidden={self.hidden} (or give head_dim)")
        else:
            checks.integer(problems, "head_dim", self.head_dim, 1, MAX_HIDDEN)
        if (self.experts == 0) != (self.top_k == 0) or self.top_k > self.experts:
            problems.append(f"top_k={self.top_k} must be in [1, experts={self.experts}] for a Mixture-of-Experts "
                            "model, 0 with experts=0")
        if self.heads % self.kv_heads:
            problems.append(f"kv_heads={self.kv_heads} must divide heads={self.heads}")
        for name, arch in (("decoder_layers", "enc-dec"), ("hops", "memnet")):
            value = getattr(self, name)
            if self.arch == arch or isinstance(value, bool) or not isinstance(value, int):
                checks.integer(problems, name, value, 1 if self.arch == arch else 0, MAX_LAYERS)
            elif value:
                problems.append(f"{name}={value} is only allowed for arch {arch}")

    @property
    def q_hidden(self) -> int:
        """Width of the Q projection and of the attention output (hidden unless head_dim is explicit)."""
        return self.heads * self.head_dim

    @property
    def embed_width(self) -> int:
        """Width of the word-embedding table (and of the LM head's input)."""
        return self.embed_dim or self.hidden

    @property
    def kv_hidden(self) -> int:
        """Width of the K and V projections (smaller than hidden under grouped-query attention)."""
        return self.kv_heads * self.head_dim

    def replace(self, **changes: Any) -> ModelSpec:
        """A copy with fields changed (validated again); kv_heads follows heads unless given."""
        if "heads" in changes and "kv_heads" not in changes and self.kv_heads == self.heads:
            changes["kv_heads"] = 0
        if {"hidden", "heads"} & set(changes) and "head_dim" not in changes and self.head_dim * self.heads == self.hidden:
            changes["head_dim"] = 0
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class RunSpec:
    """How the model is run: mode, shapes, precision, optimizer, checkpointing, decode phase."""

    mode: str = "infer"
    batch: int = 1
    seq: int = 128
    tgt_seq: int = 0  # enc-dec target length; 0 means "same as seq"
    precision: str = "fp32"
    optimizer: str = "lamb"
    checkpoint: str = "none"
    dropout: bool = True
    phase: str = "prefill"
    kv_len: int = 0  # decode: tokens already in the KV cache
    execution: str = "eager"
    attention: str = "unfused"
    mlm_fraction: float = 0.15  # share of positions an MLM head scores (BERT masks 15%; HF's heads score all: 1.0)

    def __post_init__(self) -> None:
        if type(self.tgt_seq) is int and self.tgt_seq == 0 and isinstance(self.seq, int):  # not False, not 0.0
            object.__setattr__(self, "tgt_seq", self.seq)
        problems: list[str] = []
        checks.choice(problems, "mode", self.mode, MODES)
        checks.integer(problems, "batch", self.batch, 1, MAX_BATCH)
        checks.integer(problems, "seq", self.seq, 1, MAX_SEQ)
        checks.integer(problems, "tgt_seq", self.tgt_seq, 1, MAX_SEQ)
        checks.choice(problems, "precision", self.precision, PRECISIONS)
        checks.choice(problems, "optimizer", self.optimizer, OPTIMIZERS)
        checks.choice(problems, "phase", self.phase, PHASES)
        checks.choice(problems, "execution", self.execution, EXECUTIONS)
        checks.choice(problems, "attention", self.attention, ATTENTIONS)
        checks.number(problems, "mlm_fraction", self.mlm_fraction, 1e-6, 1.0)
        checks.flag(problems, "dropout", self.dropout)
        checks.integer(problems, "kv_len", self.kv_len, 0, MAX_SEQ)
        if not isinstance(self.checkpoint, str) or not _CHECKPOINT_RE.fullmatch(self.checkpoint):
            problems.append(f"checkpoint={show(self.checkpoint)} is not one of none, sqrt, every-K (K ≥ 1)")
        if not problems:
            if self.mode == "train" and self.precision == "int8":
                problems.append("precision='int8' is inference-only; training allows "
                                + ", ".join(p for p in PRECISIONS if p != "int8"))
            if self.mode == "train" and self.phase == "decode":
                problems.append("phase='decode' is inference-only; training uses phase=prefill")
            if self.phase == "decode" and self.kv_len < 1:
                problems.append(f"kv_len={self.kv_len} must be ≥ 1 in phase=decode (tokens already cached)")
        if problems:
            raise SpecError(problems, "run")

    @property
    def training(self) -> bool:
        return self.mode == "train"

    def segment_size(self, layers: int) -> int:
        """Layers per checkpointed segment; 0 when checkpointing is off (002 §4: √N segments)."""
        if self.checkpoint == "none":
            return 0
        if self.checkpoint == "sqrt":
            return math.ceil(layers / max(1, math.isqrt(layers)))  # 24 layers: 4 segments of 6
        return int(self.checkpoint.split("-", 1)[1])

    def replace(self, **changes: Any) -> RunSpec:
        """A copy with fields changed (validated again); tgt_seq follows seq unless given."""
        if "seq" in changes and "tgt_seq" not in changes and self.tgt_seq == self.seq:
            changes["tgt_seq"] = 0
        return dataclasses.replace(self, **changes)


def _positive(v: Any) -> bool:
    return type(v) is int and v > 0


def model_from_dict(data: Any, where: str) -> ModelSpec:
    """Build a ModelSpec from a mapping, naming unknown and missing fields in one error."""
    if not isinstance(data, dict):
        raise SpecError([f"expected a mapping of model fields, got {type(data).__name__}"], where)
    known = {f.name for f in dataclasses.fields(ModelSpec)}
    problems = unknown_fields(data, known, lambda k: show(k, 40))
    required = [f.name for f in dataclasses.fields(ModelSpec) if f.default is dataclasses.MISSING]
    problems += [f"missing field {k!r}" for k in required if k not in data]
    if problems:
        raise SpecError(problems, where)
    return ModelSpec(**data)


def preset_dir(kind: str) -> Path:
    """Folder of the packaged preset data files of one kind (models or devices)."""
    return Path(__file__).parent / "presets" / kind

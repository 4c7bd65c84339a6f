"""Reference NLP models in plain PyTorch (explicit QKᵀ, softmax, PV), with HuggingFace parameter names (003 §II-A).

- ``EncoderLayer``: multi-head self-attention + feed-forward, post-LN; GELU for BERT, ReLU for the Transformer.
  Module and parameter names are those of HF ``BertLayer`` (``attention.self.query``, ``attention.output.dense``,
  ``attention.output.LayerNorm``, ``intermediate.dense``, ``output.dense``, ``output.LayerNorm``), so a BERT
  checkpoint's layer state dict loads unchanged.
- ``DecoderLayer``: masked (causal) self-attention, encoder-decoder attention and feed-forward. The encoder-decoder
  attention is 003's *multi-head attention* (Table I, Table II note †): only Q-Gen; K and V are the encoder output
  split into heads, without K/V-Gen.
- ``MemoryNetwork``: the end-to-end memory network's attention mechanism (003 Fig. 2a, eq. 1) applied for ``hops``
  hops over a memory of ``ns`` embedded slots (input memory as keys, output memory as values), the controller
  updated as u ← H·u + o (layer-wise tying), then the answer FC.

Attention masks are additive, broadcastable to (B, h, S_q, S_k), as HF passes them (0 or a large negative value).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from tstack.errors import SpecError
from tstack.models import load_model
from tstack.spec import ModelSpec

ACTIVATIONS = ("gelu", "gelu-tanh", "relu", "silu")


def activation(name: str) -> nn.Module:
    """The activation module of a ModelSpec activation name (modules, so that layers pickle)."""
    if name not in ACTIVATIONS:
        raise SpecError([f"activation={name!r} is not one of {', '.join(ACTIVATIONS)}"], "feed-forward")
    return {"gelu": nn.GELU, "gelu-tanh": lambda: nn.GELU("tanh"), "relu": nn.ReLU, "silu": nn.SiLU}[name]()


def causal_mask(s: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Additive (1, 1, S, S) mask: query i sees keys j ≤ i (the decoder's masked self-attention)."""
    upper = torch.ones(s, s, dtype=torch.bool).triu(1)
    return torch.zeros(s, s, dtype=dtype).masked_fill(upper, torch.finfo(dtype).min)[None, None]


def padding_mask(key_mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, S_k) bool, True = real token -> additive (B, 1, 1, S_k) mask."""
    return torch.zeros(key_mask.shape, dtype=dtype).masked_fill(~key_mask, torch.finfo(dtype).min)[:, None, None]


def split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, S, h·d) -> (B, h, S, d)."""
    b, s, hd = t.shape
    return t.view(b, s, heads, hd // heads).transpose(1, 2)


def merge_heads(t: torch.Tensor) -> torch.Tensor:
    """(B, h, S, d) -> (B, S, h·d)."""
    b, h, s, d = t.shape
    return t.transpose(1, 2).reshape(b, s, h * d)


def dot_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                  sdpa: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Softmax(Q·Kᵀ + mask)·V over the last two dims (003 eq. 1); q scaled by the caller. Returns (A, P).

    ``sdpa``: PyTorch's fused ``F.scaled_dot_product_attention`` instead (the comparison baseline; P is not formed).
    """
    if sdpa:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0), None
    scores = q @ k.transpose(-1, -2)  # dot product: (…, S_q, S_k)
    if mask is not None:
        scores = scores + mask
    probs = torch.softmax(scores, dim=-1)  # softmax
    return probs @ v, probs  # weighted sum: (…, S_q, d)


class SelfAttention(nn.Module):
    """Q/K/V-Gen + scaled dot-product attention of h heads (HF ``BertSelfAttention`` names and return convention).

    With ``kv_gen=False`` (encoder-decoder attention, 003 Table I †) only ``query`` exists and K = V = the
    encoder output ``encoder_hidden_states`` split into heads.
    """

    def __init__(self, hidden: int, heads: int, kv_gen: bool = True) -> None:
        super().__init__()
        if hidden % heads:
            raise SpecError([f"heads={heads} must divide hidden={hidden}"], "attention")
        self.num_attention_heads = heads
        self.attention_head_size = hidden // heads
        self.all_head_size = hidden
        self.kv_gen = kv_gen
        self.sdpa = False  # True: the fused SDPA kernel replaces the explicit QKᵀ, softmax, PV
        self.query = nn.Linear(hidden, hidden)
        if kv_gen:
            self.key = nn.Linear(hidden, hidden)
            self.value = nn.Linear(hidden, hidden)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None, **_: object) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.num_attention_heads
        scale = 1.0 / math.sqrt(self.attention_head_size)
        q = split_heads(self.query(hidden_states), h) * scale  # Q-Gen: (B, h, S, d)
        if self.kv_gen:
            k, v = split_heads(self.key(hidden_states), h), split_heads(self.value(hidden_states), h)  # K/V-Gen
        else:
            if encoder_hidden_states is None:
                raise SpecError(["encoder_hidden_states=None: encoder-decoder attention needs the encoder output"],
                                "attention")
            k = v = split_heads(encoder_hidden_states, h)  # no K/V-Gen (003 Table II †)
        a, probs = dot_attention(q, k, v, attention_mask, self.sdpa)
        return merge_heads(a), probs  # (B, S, H)


class DenseAddNorm(nn.Module):
    """dense -> dropout -> + residual -> LayerNorm (HF ``BertSelfOutput`` / ``BertOutput`` names)."""

    def __init__(self, n_in: int, n_out: int, eps: float = 1e-12) -> None:
        super().__init__()
        self.dense = nn.Linear(n_in, n_out)
        self.LayerNorm = nn.LayerNorm(n_out, eps=eps)
        self.dropout = nn.Dropout(0.0)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)


class Attention(nn.Module):
    """``self`` (attention) + ``output`` (attention FC, residual, LayerNorm), as HF ``BertAttention``."""

    def __init__(self, hidden: int, heads: int, kv_gen: bool = True, eps: float = 1e-12) -> None:
        super().__init__()
        self.self = SelfAttention(hidden, heads, kv_gen)
        self.output = DenseAddNorm(hidden, hidden, eps)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None, **_: object) -> tuple[torch.Tensor, torch.Tensor]:
        a, probs = self.self(hidden_states, attention_mask, encoder_hidden_states=encoder_hidden_states)
        return self.output(a, hidden_states), probs


class Intermediate(nn.Module):
    """Linear trans-1 + activation (HF ``BertIntermediate`` names)."""

    def __init__(self, hidden: int, ffn: int, act: str) -> None:
        super().__init__()
        self.intermediate_act_fn = activation(act)
        self.dense = nn.Linear(hidden, ffn)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(hidden_states))


def _seeded(build, seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build().eval()


class EncoderLayer(nn.Module):
    """Self-attention + FFN, post-LN (BERT with GELU, the Transformer encoder with ReLU); HF ``BertLayer`` names."""

    def __init__(self, hidden: int, heads: int, ffn: int, activation: str = "gelu", eps: float = 1e-12) -> None:
        super().__init__()
        self.attention = Attention(hidden, heads, True, eps)
        self.intermediate = Intermediate(hidden, ffn, activation)
        self.output = DenseAddNorm(ffn, hidden, eps)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: object) -> torch.Tensor:
        a, _ = self.attention(hidden_states, attention_mask)
        return self.output(self.intermediate(a), a)

    @classmethod
    def from_spec(cls, spec: ModelSpec | str, seed: int = 0) -> EncoderLayer:
        """One layer of a spec's (or preset name's) shapes at random weights (seeded)."""
        spec = load_model(spec)
        return _seeded(lambda: cls(spec.hidden, spec.heads, spec.ffn, spec.activation), seed)

    @classmethod
    def from_hf(cls, layer: nn.Module) -> EncoderLayer:
        """A copy of a HF ``BertLayer`` (its weights loaded by name, strictly)."""
        sa, act = layer.attention.self, getattr(layer.intermediate, "intermediate_act_fn", None)
        name = {"GELUActivation": "gelu", "NewGELUActivation": "gelu-tanh", "ReLU": "relu", "SiLU": "silu",
                "SiLUActivation": "silu"}.get(type(act).__name__)
        if name is None:
            raise SpecError([f"activation {type(act).__name__} is not one of GELUActivation, NewGELUActivation, ReLU, SiLU"],
                            "from_hf")
        ref = cls(sa.query.in_features, sa.num_attention_heads, layer.intermediate.dense.out_features, name,
                  layer.output.LayerNorm.eps)
        ref.load_state_dict(layer.state_dict(), strict=True)
        return ref.eval()


class DecoderLayer(nn.Module):
    """Masked self-attention, encoder-decoder attention (Q-Gen only, 003 Table I †) and FFN (ReLU), post-LN."""

    def __init__(self, hidden: int, heads: int, ffn: int, activation: str = "relu", eps: float = 1e-12) -> None:
        super().__init__()
        self.attention = Attention(hidden, heads, True, eps)
        self.crossattention = Attention(hidden, heads, False, eps)
        self.intermediate = Intermediate(hidden, ffn, activation)
        self.output = DenseAddNorm(ffn, hidden, eps)

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                encoder_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        a, _ = self.attention(hidden_states, causal_mask(hidden_states.shape[1], hidden_states.dtype))
        c, _ = self.crossattention(a, encoder_attention_mask, encoder_hidden_states=encoder_hidden_states)
        return self.output(self.intermediate(c), c)

    @classmethod
    def from_spec(cls, spec: ModelSpec | str, seed: int = 0) -> DecoderLayer:
        """One decoder layer of a spec's (or preset name's) shapes at random weights (seeded)."""
        spec = load_model(spec)
        return _seeded(lambda: cls(spec.hidden, spec.heads, spec.ffn, spec.activation), seed)


class MemoryAttention(nn.Module):
    """The attention mechanism of a memory network (003 Fig. 2a, eq. 1): (Q, K, V, mask) -> (A, P)."""

    def __init__(self) -> None:
        super().__init__()
        self.sdpa = False

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        return dot_attention(q, k, v, mask, self.sdpa)


class MemoryNetwork(nn.Module):
    """End-to-end memory network over embedded memories: ``hops`` × (attention, u ← H·u + o), then the answer FC."""

    def __init__(self, hidden: int, hops: int, vocab: int) -> None:
        super().__init__()
        if hops < 1:
            raise SpecError([f"hops={hops} must be ≥ 1"], "memory network")
        self.hops = hops
        self.attention = MemoryAttention()
        self.H = nn.Linear(hidden, hidden, bias=False)
        self.answer = nn.Linear(hidden, vocab, bias=False)

    def forward(self, u: torch.Tensor, memory_in: torch.Tensor, memory_out: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """u (B, n_q, d) questions, memory_in/out (B, ns, d) -> answer logits (B, n_q, vocab)."""
        for _ in range(self.hops):
            o, _ = self.attention(u, memory_in, memory_out, mask)
            u = self.H(u) + o
        return self.answer(u)

    @classmethod
    def from_spec(cls, spec: ModelSpec | str, seed: int = 0) -> MemoryNetwork:
        """A memory network of a memnet spec's (or preset name's) shapes at random weights (seeded)."""
        spec = load_model(spec)
        if spec.arch != "memnet":
            raise SpecError([f"arch={spec.arch!r}: MemoryNetwork needs a memnet spec"], f"model {spec.name!r}")
        return _seeded(lambda: cls(spec.hidden, spec.hops, spec.vocab), seed)

"""The NLP-Fast drop-in API (003 §IV): ``optimize(model, mp, zs, params)`` and per-op functions with is_mp, is_zs, params.

``params`` is one dict for every optimization, as the paper's tuple: ``score_threshold``, ``zero_ratio``,
``chunk`` and ``threads`` (zero skipping's, passed to ``ZSParams``; ``chunk`` is also the column-based algorithm's
key chunk), plus ``head_block`` (heads per partial-head group) and ``ffn_blocks`` (feed-forward splitting's
blocks). ``chunk``, ``head_block`` and ``ffn_blocks`` default to None: the partitioning sizes them from the shapes
and the L2 per call (``Plan.attention_blocks``, ``ffn_block``), zero skipping uses its own default tile. A key
belongs to an optimization that may be off: flipping ``mp``/``zs`` needs no other change, so keys of an
optimization that is off are validated and unused. Unknown keys raise a ``SpecError``.

``optimize`` swaps modules in place, found by their HF names, in a HF ``BertModel`` (or any module whose layers have
``attention.self``, ``attention.output``, ``intermediate`` and ``output``) and in the reference models:

- mp (partial-head + column-based attention): ``layer.attention`` (and a decoder's ``layer.crossattention``)
  becomes a ``PartitionedAttention`` holding the original ``self`` and ``output`` modules, so its state-dict keys
  do not change; the attention FC is done per head group inside it (003 Fig. 5b).
- zs: ``layer.attention.self`` becomes ``ZSSelfAttention.from_hf(...)`` (zero skipping, V-Gen skipping and its own
  column chunks); the attention FC stays where it was.
- mp (feed-forward splitting), with or without zs: ``layer.intermediate`` becomes ``nn.Identity`` and
  ``layer.output`` a ``SplitFeedForward`` holding the original modules as ``fc1`` and ``fc2``.
- a ``MemoryNetwork``'s attention mechanism becomes a ``PartitionedMemoryAttention`` (column-based over the memory).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from tstack import checks
from tstack.errors import SpecError, TstackError
from tstack.kernels.partition import AttentionWeights, Plan, lazy_softmax_attention, mha, split_ffn
from tstack.kernels.reference import MemoryNetwork, dot_attention

ZS_KEYS = ("score_threshold", "zero_ratio", "chunk", "threads")
MP_KEYS = ("chunk", "head_block", "ffn_blocks")


@dataclass(frozen=True)
class Params:
    """The validated ``params`` dict: zero-skipping thresholds and partition sizes (None: sized per call)."""

    score_threshold: float = 0.0
    zero_ratio: float = 1.0
    chunk: int | None = None
    threads: int = 1
    head_block: int | None = None
    ffn_blocks: int | None = None

    def __post_init__(self) -> None:
        problems = []
        for name in ("score_threshold", "zero_ratio"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
                problems.append(f"{name}={v!r} must be a real number")
        if not problems and not 0.0 <= self.score_threshold < 1.0:
            problems.append(f"score_threshold={self.score_threshold!r} must be a probability in [0, 1)")
        if not problems and not 0.0 <= self.zero_ratio <= 1.0:
            problems.append(f"zero_ratio={self.zero_ratio!r} must be in [0, 1]")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1:
            problems.append(f"threads={self.threads!r} must be an integer ≥ 1")
        for name in ("chunk", "head_block", "ffn_blocks"):
            checks.size_or_auto(problems, name, getattr(self, name), "to size it from the L2 cache")
        if problems:
            raise SpecError(problems, "params")

    @classmethod
    def of(cls, params: dict[str, Any] | None) -> Params:
        if params is not None and not isinstance(params, dict):
            raise SpecError([f"params must be a dict, got {type(params).__name__}"], "params")
        params = params or {}
        known = [f.name for f in fields(cls)]
        unknown = [f"unknown key {k!r} (allowed: {', '.join(known)})" for k in params if k not in known]
        if unknown:
            raise SpecError(unknown, "params")
        return cls(**params)

    def plan(self, variant: str = "PCF") -> Plan:
        """The partition plan of a variant with these sizes (validated by Plan)."""
        return Plan.of(variant, self.head_block, self.chunk, self.ffn_blocks)

    def zs(self) -> Any:
        """B's ``ZSParams`` with the zero-skipping keys (validated there)."""
        from tstack.kernels.zeroskip import ZSParams

        return ZSParams(**{k: getattr(self, k) for k in ZS_KEYS if getattr(self, k) is not None})


def _check_eval(module: nn.Module) -> None:
    if module.training:
        raise TstackError(f"{type(module).__name__} is inference-only (no attention dropout): call model.eval() first")


class PartitionedAttention(nn.Module):
    """``self`` + ``output`` of a (HF or reference) attention block run by ``mha`` under a Plan; HF return convention."""

    def __init__(self, attention: nn.Module, plan: Plan) -> None:
        super().__init__()
        self.self = attention.self
        self.output = attention.output
        self.plan = plan
        self._groups: tuple | None = None  # ((group, weight versions), packed groups): no parameters, no state
        self.train(attention.training)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None, encoder_attention_mask: torch.Tensor | None = None,
                **_: object) -> tuple[torch.Tensor, None]:
        """HF ``BertAttention``'s call: cross-attention takes K/V from ``encoder_hidden_states`` (masked by its mask).

        The head groups' packed Q/K/V-Gen weights are kept between calls, rebuilt when the group size or a weight
        changes (replaced, or updated in place: tensor identity and version)."""
        _check_eval(self)
        w = AttentionWeights.of(self.self, self.output.dense)
        if not w.kv_gen and encoder_hidden_states is None:
            raise SpecError(["encoder_hidden_states=None: encoder-decoder attention needs the encoder output"], "attention")
        mask = attention_mask if encoder_attention_mask is None else encoder_attention_mask
        memory = encoder_hidden_states if encoder_hidden_states is not None else hidden_states
        group, _ = self.plan.attention_blocks(w.heads, w.head_size, hidden_states.shape[1], memory.shape[1])
        key = (group, w.versions())
        if self._groups is None or self._groups[0] != key:  # packed once, again when a weight changes
            self._groups = (key, w.grouped(group))
        z = mha(hidden_states, w, _mask4(mask, hidden_states.dtype), self.plan, encoder_hidden_states, self._groups[1],
                residual=hidden_states)  # dropout: identity in eval
        return self.output.LayerNorm(z), None


class SplitFeedForward(nn.Module):
    """Replaces a layer's ``output`` (its ``intermediate`` becomes Identity): split FFN + residual, LayerNorm."""

    def __init__(self, intermediate: nn.Module, output: nn.Module, n_blocks: int | None) -> None:
        super().__init__()
        self.fc1 = intermediate
        self.fc2 = output
        self.n_blocks = n_blocks
        self.train(output.training)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        _check_eval(self)
        y = split_ffn(hidden_states, self.fc1.dense, self.fc1.intermediate_act_fn, self.fc2.dense, self.n_blocks,
                      residual=input_tensor)  # dropout: identity in eval
        return self.fc2.LayerNorm(y)


class PartitionedMemoryAttention(nn.Module):
    """A memory network's attention mechanism, column-based over the memory slots (003 §III-B2)."""

    def __init__(self, chunk: int | None) -> None:
        super().__init__()
        self.chunk = chunk
        self.eval()

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        return attention(q, k, v, mask, is_mp=True, params={"chunk": self.chunk}), None


def _mask4(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """HF's 4-D mask as an additive one: float masks as they are, bool masks (True = attend, HF's sdpa path) converted."""
    if mask is not None and mask.dim() != 4:
        raise SpecError([f"attention_mask has shape {tuple(mask.shape)}: it must be 4-D, broadcastable to (B, h, S_q, S_k)"],
                        "attention")
    if mask is not None and mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype).masked_fill_(~mask, torch.finfo(dtype).min)
    return mask


def _is_layer(m: nn.Module) -> bool:
    return all(hasattr(m, n) for n in ("attention", "intermediate", "output")) and hasattr(m.attention, "self")


def optimize(model: nn.Module, mp: bool = True, zs: bool = False, params: dict[str, Any] | None = None) -> nn.Module:
    """Swap the attention and FFN of every layer of ``model`` in place (see the module doc); returns ``model``."""
    for name, flag in (("mp", mp), ("zs", zs)):
        if not isinstance(flag, bool):
            raise SpecError([f"{name}={flag!r} must be true or false"], "optimize")
    p = Params.of(params)
    plan = p.plan("PCF")
    zs_params = p.zs() if zs else None
    return _apply(model, plan if mp else None, zs_params)


def partition(model: nn.Module, plan: Plan) -> nn.Module:
    """Apply one partitioning variant in place: P/C swap the attention blocks, F the FFNs (``optimize`` uses PCF)."""
    return _apply(model, plan, None)


def _apply(model: nn.Module, plan: Plan | None, zs_params: Any) -> nn.Module:
    _check_eval(model)
    layers = [m for m in model.modules() if _is_layer(m)]
    memnets = [m for m in model.modules() if isinstance(m, MemoryNetwork)]
    if not layers and not memnets:
        raise TstackError(f"optimize: {type(model).__name__} has no layer with attention.self/intermediate/output "
                          "(HF BertLayer names) and no MemoryNetwork")
    if any(isinstance(m.attention, PartitionedAttention) or isinstance(m.output, SplitFeedForward)
           or type(m.attention.self).__name__ == "ZSSelfAttention" for m in layers):
        raise TstackError("optimize: the model is already optimized (load a fresh copy)")
    for layer in layers:
        _swap_layer(layer, plan, zs_params)
    for net in memnets:
        if zs_params is not None:
            raise TstackError("optimize: zero skipping of a memory network's attention needs V-Gen weights that a memory "
                              "network does not have; use the per-op attention(..., is_zs=True)")
        if plan is not None and plan.column:
            net.attention = PartitionedMemoryAttention(plan.chunk)
    return model


def _swap_layer(layer: nn.Module, plan: Plan | None, zs_params: Any) -> None:
    if zs_params is not None:
        if hasattr(layer, "crossattention"):
            raise TstackError("optimize: zero skipping covers encoder self-attention with key-padding masks; "
                              f"{type(layer).__name__} has causal and encoder-decoder attention (use zs=False)")
        from tstack.kernels.zeroskip import ZSSelfAttention

        layer.attention.self = ZSSelfAttention.from_hf(layer.attention.self, zs_params)
    elif plan is not None and (plan.partial_head or plan.column):
        layer.attention = PartitionedAttention(layer.attention, plan)
        if hasattr(layer, "crossattention"):
            layer.crossattention = PartitionedAttention(layer.crossattention, plan)
    if plan is not None and plan.ffn_split:
        layer.output = SplitFeedForward(layer.intermediate, layer.output, plan.ffn_blocks)
        layer.intermediate = nn.Identity()


# ---------------------------------------------------------------------------------------------------------------------
# Per-op functions (003 §IV, Fig. 8a): the original op plus is_mp, is_zs and params
# ---------------------------------------------------------------------------------------------------------------------
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None, *, is_mp: bool = False,
              is_zs: bool = False, params: dict[str, Any] | None = None) -> torch.Tensor:
    """The attention mechanism Softmax(Q·Kᵀ + mask)·V (003 eq. 1), q already scaled; (…, S, d) -> (…, S, d).

    is_mp: column-based over the keys, ``params['chunk']`` at a time. is_zs: B's ``zs_attention`` with V-Gen by the
    identity (V given), 4-D (B, h, S, d) inputs and a key-padding mask (B, 1, 1, S_k) only.
    """
    p = Params.of(params)
    if is_zs:
        return _zs_attention(q, k, v, mask, p)
    if not is_mp:
        return dot_attention(q, k, v, mask)[0]
    lead = q.shape[:-2]
    q4, k4, v4 = (t.reshape(-1, 1, *t.shape[-2:]) for t in (q, k, v))  # (B·…, 1, S, d): one group
    if k4.shape[0] != q4.shape[0] or v4.shape[0] != q4.shape[0]:
        raise SpecError([f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} must share their leading dims"],
                        "attention")
    m4 = None if mask is None else mask.expand(*lead, q.shape[-2], k.shape[-2]).reshape(-1, 1, q.shape[-2], k.shape[-2])
    _, chunk = Plan(column=True, chunk=p.chunk).attention_blocks(1, q.shape[-1], q.shape[-2], k.shape[-2])
    a = lazy_softmax_attention(q4, lambda s, e: (k4[:, :, s:e], v4[:, :, s:e]), k.shape[-2], chunk, m4)
    return a.view(*lead, *a.shape[-2:])


def _zs_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, p: Params) -> torch.Tensor:
    from tstack.kernels.zeroskip import zs_attention

    if q.dim() != 4:
        raise SpecError([f"q has shape {tuple(q.shape)}: is_zs needs (B, h, S, d)"], "attention")
    key_mask = None
    if mask is not None:
        if mask.dim() != 4 or mask.shape[1:3] != (1, 1):
            raise SpecError([f"mask has shape {tuple(mask.shape)}: is_zs takes a key-padding mask (B, 1, 1, S_k)"],
                            "attention")
        key_mask = (mask[:, 0, 0, :] == 0).expand(q.shape[0], -1)
    b, h, s_k, d = v.shape
    v_input = v.transpose(1, 2).reshape(b, s_k, h * d)  # V-Gen by the identity: v_input·Iᵀ = V
    eye = torch.eye(h * d, dtype=v.dtype)
    context, _ = zs_attention(q * d ** 0.5, k, v_input, eye, None, key_mask, p.zs())  # zs_attention scales by d^-1/2
    return context


def self_attention(hidden: torch.Tensor, attention: nn.Module, attention_mask: torch.Tensor | None = None, *,
                   is_mp: bool = False, is_zs: bool = False, params: dict[str, Any] | None = None) -> torch.Tensor:
    """Multi-head self-attention through residual + LayerNorm of an attention block (HF ``BertAttention`` names)."""
    p = Params.of(params)
    if is_zs:
        from tstack.kernels.zeroskip import ZSSelfAttention

        ctx = ZSSelfAttention.from_hf(attention.self, p.zs())(hidden, attention_mask)[0]
        return attention.output(ctx, hidden)
    block = PartitionedAttention(attention, p.plan("PC" if is_mp else "base")).eval()
    return block(hidden, attention_mask)[0]


def feed_forward(hidden: torch.Tensor, intermediate: nn.Module, output: nn.Module, *, is_mp: bool = False,
                 is_zs: bool = False, params: dict[str, Any] | None = None) -> torch.Tensor:
    """FFN + residual + LayerNorm (HF ``BertIntermediate``/``BertOutput``); is_mp splits d_FF into ``ffn_blocks``."""
    p = Params.of(params)
    if is_zs:
        raise SpecError(["is_zs=True: zero skipping applies to attention (003 §III-C), not to the feed-forward network"],
                        "feed_forward")
    if not is_mp:
        return output(intermediate(hidden), hidden)
    return SplitFeedForward(intermediate, output, p.ffn_blocks)(hidden, hidden)

"""Forward steps of the blocks a Transformer layer is made of (unfused, as a framework launches them).

Shapes: B batch, Sq query tokens per sequence, Skv keys per sequence, H hidden, F feed-forward,
h heads of width dh = H/h, hk key/value heads (grouped-query attention when hk < h).
"""

from __future__ import annotations

from dataclasses import dataclass

from tstack.workload import emit
from tstack.workload.emit import Ctx, Step
from tstack.workload.labels import ATTN_BGEMM, DR_RC_LN, FC_GEMM, GELU, LINEAR_GEMM, SCALE_MASK_SM

ACT_GROUP = {"gelu": GELU, "gelu-tanh": GELU, "relu": "ReLU", "silu": "SiLU"}
ACT_KERNEL = {"gelu": "bias-gelu", "gelu-tanh": "bias-gelu-tanh", "relu": "bias-relu", "silu": "bias-silu"}
GATED_KERNEL = {"gelu": "gelu-mul", "gelu-tanh": "gelu-mul", "relu": "relu-mul", "silu": "silu-mul"}


@dataclass(frozen=True, slots=True)
class AttnShape:
    """Token counts of one attention block."""

    Sq: int  # query tokens per sequence
    Skv: int  # keys attended to per sequence (cache included)
    Skv_new: int  # keys whose K/V are generated in this pass (0: cached, as in enc-dec decode)


def labels(layer: str, block: str, group: str, nlpfast: str, part: str = "transformer") -> dict[str, str]:
    return {"part": part, "layer": layer, "block": block, "group": group, "nlpfast": nlpfast, "pass": "fwd"}


def attention(ctx: Ctx, layer: str, shape: AttnShape, prefix: str = "attn") -> list[Step]:
    """Q/K/V-Gen, QKᵀ, scale, mask, softmax, dropout, P·V and the output projection.

    Under ``attention=sdpa`` the part between the projections becomes one fused kernel after the workload is built
    (``build``: workload.fusion.sdpa) and its keys are capped at the sliding window; unfused, a sliding window is a
    mask over the full score matrix. Eager execution adds the framework copies: the KV-cache concatenation of a
    decode step and, unfused, repeat_kv of grouped-query attention (SDPA takes the KV heads as they are).
    """
    m, r, B = ctx.model, ctx.run, ctx.run.batch
    H, Hq, dh, hk = m.hidden, m.q_hidden, m.head_dim, m.kv_heads
    group_size = m.heads // hk
    T, Tkv = B * shape.Sq, B * shape.Skv_new
    qkv_bias = m.bias or m.qkv_bias
    window = m.sliding_window
    Skv = min(shape.Skv, window) if window and (r.attention == "sdpa" or r.phase == "decode") else shape.Skv

    def L(group: str, nlp: str) -> dict[str, str]:
        return labels(layer, "attention", group, nlp)

    steps = [emit.linear(ctx, f"{prefix}.q_proj", (Hq, T, H), L(LINEAR_GEMM, "Q-Gen"), qkv_bias)]
    if shape.Skv_new:
        for name in ("k_proj", "v_proj"):
            steps.append(emit.linear(ctx, f"{prefix}.{name}", (m.kv_hidden, Tkv, H), L(LINEAR_GEMM, "K/V-Gen"), qkv_bias))
    if m.position == "rotary":
        steps.append(emit.pointwise(ctx, "rope", T, Hq, L("RoPE", "Q-Gen")))
        if shape.Skv_new:
            steps.append(emit.pointwise(ctx, "rope", Tkv, m.kv_hidden, L("RoPE", "K/V-Gen")))
    eager = r.execution == "eager"
    if eager and r.phase == "decode" and shape.Skv_new:  # DynamicCache: torch.cat(cache, new) for K and V
        steps += [emit.copy(ctx, "kv-cache-cat", B * Skv, m.kv_hidden, 1, L(LINEAR_GEMM, "K/V-Gen")) for _ in "kv"]
    if eager and group_size > 1 and r.attention != "sdpa":  # eager repeat_kv materializes K, V once per query head
        steps += [emit.copy(ctx, "repeat-kv", B * Skv * hk, dh, group_size, L(ATTN_BGEMM, "dot product"))
                  for _ in "kv"]
    # Scores: the queries of a KV group share its keys, so one B-GEMM per (sequence, KV head).
    score_rows = B * m.heads * shape.Sq
    steps.append(emit.bgemm(ctx, f"{prefix}.score", (Skv, shape.Sq * group_size, dh), B * hk,
                            L(ATTN_BGEMM, "dot product")))
    sm = L(SCALE_MASK_SM, "softmax")
    steps.append(emit.pointwise(ctx, "scale", score_rows, Skv, sm))
    steps.append(emit.pointwise(ctx, "mask", score_rows, Skv, sm))
    steps.append(emit.pointwise(ctx, "softmax", score_rows, Skv, sm))
    if ctx.attn_dropout:
        steps.append(emit.pointwise(ctx, "dropout", score_rows, Skv, sm))
    steps.append(emit.bgemm(ctx, f"{prefix}.context", (dh, shape.Sq * group_size, Skv), B * hk,
                            L(ATTN_BGEMM, "weighted sum")))
    steps.append(emit.linear(ctx, f"{prefix}.out_proj", (H, T, Hq), L(LINEAR_GEMM, "attention FC"), m.bias))
    return steps


def add_norm(ctx: Ctx, layer: str, tokens: int, part: str = "transformer") -> list[Step]:
    """Dropout, residual add and the normalization that follow (post-LN) or precede (pre-LN) a sublayer."""
    L = labels(layer, DR_RC_LN, DR_RC_LN, "layernorm/residual", part)
    H = ctx.model.hidden
    steps = []
    if ctx.dropout:
        steps.append(emit.pointwise(ctx, "dropout", tokens, H, L))
    steps.append(emit.pointwise(ctx, "residual", tokens, H, L))
    steps.append(emit.pointwise(ctx, ctx.model.norm, tokens, H, L))
    return steps


def ffn(ctx: Ctx, layer: str, tokens: int) -> list[Step]:
    """W1 (or gate and up), the activation with its bias, W2; a Mixture of Experts when the model has experts."""
    if ctx.model.experts:
        return moe(ctx, layer, tokens)
    return dense_ffn(ctx, layer, tokens, ctx.model.ffn)


def dense_ffn(ctx: Ctx, layer: str, tokens: int, width: int, prefix: str = "ffn") -> list[Step]:
    m = ctx.model
    H = m.hidden
    act_group = ACT_GROUP[m.activation]

    def L(group: str, nlp: str) -> dict[str, str]:
        return labels(layer, "fc", group, nlp)

    if m.gated_ffn:
        steps = [emit.linear(ctx, f"{prefix}.{n}", (width, tokens, H), L(FC_GEMM, "linear trans-1"), m.bias)
                 for n in ("gate_proj", "up_proj")]
        steps.append(emit.pointwise(ctx, GATED_KERNEL[m.activation], tokens, width, L(act_group, "activation")))
    else:
        # The FC-1 bias is added inside the fused bias+activation kernel (002 "bias+GeLU").
        steps = [emit.linear(ctx, f"{prefix}.fc1", (width, tokens, H),
                             L(FC_GEMM, "linear trans-1"), False),
                 emit.pointwise(ctx, ACT_KERNEL[m.activation], tokens, width, L(act_group, "activation"))]
    steps.append(emit.linear(ctx, f"{prefix}.fc2", (H, tokens, width),
                             L(FC_GEMM, "linear trans-2"), m.bias))
    return steps


def routed_tokens(tokens: int, experts: int, top_k: int) -> list[tuple[int, int]]:
    """(tokens, experts) groups under balanced routing: the T·k assignments spread as evenly as the experts allow;
    experts that receive no token launch nothing (HF loops over the experts hit)."""
    q, rem = divmod(tokens * top_k, experts)
    return [(n, c) for n, c in ((q + 1, rem), (q, experts - rem)) if n and c]


def moe(ctx: Ctx, layer: str, tokens: int) -> list[Step]:
    """Router GEMM, softmax and top-k, each expert's gated FFN on the tokens routed to it, the weighted combine,
    and (Qwen-MoE) a shared expert gated by a sigmoid. The all-to-all of expert parallelism is not modelled."""
    m = ctx.model
    router = labels(layer, "fc", "Router", "linear trans-1")
    steps = [emit.linear(ctx, "moe.router", (m.experts, tokens, m.hidden), router, False),
             emit.pointwise(ctx, "softmax", tokens, m.experts, router)]
    for n, c in routed_tokens(tokens, m.experts, m.top_k):
        steps += dense_ffn(ctx.at_count(c), layer, n, m.ffn, prefix="moe.expert")
    # Each expert's output times its routing weight, index_add-ed into the layer output (T·k rows in all).
    combine = labels(layer, "fc", "MoE combine", "linear trans-2")
    steps += [emit.pointwise(ctx, "scale", tokens * m.top_k, m.hidden, combine),
              emit.pointwise(ctx, "residual", tokens * m.top_k, m.hidden, combine)]
    if m.shared_expert_ffn:  # sigmoid(gate(x)) (T×1, negligible) times the shared expert's output, added
        steps += dense_ffn(ctx, layer, tokens, m.shared_expert_ffn, prefix="moe.shared")
        steps += [emit.linear(ctx, "moe.shared_gate", (1, tokens, m.hidden), router, False),
                  emit.pointwise(ctx, "scale", tokens, m.hidden, combine),
                  emit.pointwise(ctx, "residual", tokens, m.hidden, combine)]
    return steps


def sublayer(ctx: Ctx, layer: str, tokens: int, body: list[Step]) -> list[Step]:
    """Wrap a sublayer with its Add & Norm: norm last in post-LN, first in pre-LN."""
    an = add_norm(ctx, layer, tokens)
    if ctx.model.norm_position == "post":
        return body + an
    return an[-1:] + body + an[:-1]


def encoder_layer(ctx: Ctx, layer: str, S: int) -> list[Step]:
    B = ctx.run.batch
    attn = attention(ctx, layer, AttnShape(S, S, S))
    return sublayer(ctx, layer, B * S, attn) + sublayer(ctx, layer, B * S, ffn(ctx, layer, B * S))


def decoder_layer(ctx: Ctx, layer: str, self_shape: AttnShape, cross_shape: AttnShape | None) -> list[Step]:
    """Masked self-attention, optional encoder-decoder attention, feed-forward."""
    tokens = ctx.run.batch * self_shape.Sq
    steps = sublayer(ctx, layer, tokens, attention(ctx, layer, self_shape))
    if cross_shape is not None:
        steps += sublayer(ctx, layer, tokens, attention(ctx, layer, cross_shape, prefix="cross"))
    return steps + sublayer(ctx, layer, tokens, ffn(ctx, layer, tokens))

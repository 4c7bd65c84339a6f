"""Parameter counts per group (embedding, one layer, head): what the optimizer updates."""

from __future__ import annotations

from tstack.spec import ModelSpec


def norm_params(m: ModelSpec) -> int:
    return 2 * m.hidden if m.norm == "layernorm" else m.hidden


def attention_params(m: ModelSpec) -> int:
    """W_q, W_k, W_v, W_o (K and V narrower under grouped-query attention) and their biases."""
    H, Hq, Hk = m.hidden, m.q_hidden, m.kv_hidden
    weights = 2 * H * Hq + 2 * H * Hk
    qkv_bias = Hq + 2 * Hk if m.bias or m.qkv_bias else 0
    return weights + qkv_bias + (H if m.bias else 0)


def ffn_params(m: ModelSpec) -> int:
    """A dense feed-forward block, or a Mixture of Experts: router, experts and the gated shared expert."""
    if m.experts:
        shared = dense_ffn_params(m, m.shared_expert_ffn) + m.hidden if m.shared_expert_ffn else 0
        return m.experts * m.hidden + m.experts * dense_ffn_params(m, m.ffn) + shared
    return dense_ffn_params(m, m.ffn)


def dense_ffn_params(m: ModelSpec, Fd: int) -> int:
    H = m.hidden
    if m.gated_ffn:
        return 3 * H * Fd + ((2 * Fd + H) if m.bias else 0)
    return 2 * H * Fd + ((Fd + H) if m.bias else 0)


def layer_params(m: ModelSpec, cross_attention: bool = False) -> int:
    """One encoder/decoder layer: attention(s), feed-forward and one norm per sublayer."""
    sublayers = 3 if cross_attention else 2
    return attention_params(m) * (2 if cross_attention else 1) + ffn_params(m) + sublayers * norm_params(m)


def embedding_params(m: ModelSpec) -> int:
    if m.arch == "memnet":
        return (m.hops + 1) * m.vocab * m.hidden  # MemN2N with adjacent weight tying: A¹=B, Aᵏ⁺¹=Cᵏ
    n = m.vocab * m.embed_width + m.type_vocab * m.hidden
    if m.embed_dim:  # OPT-350m project_in and project_out (no biases)
        n += 2 * m.embed_dim * m.hidden
    if m.position == "learned":
        n += (m.max_positions + m.position_offset) * m.hidden
    if m.arch == "encoder":
        n += norm_params(m)  # BERT's embedding LayerNorm
    return n


def head_params(m: ModelSpec) -> int:
    H, V = m.hidden, m.vocab
    untied = 0 if m.tie_embeddings else V * m.embed_width
    mlm = H * H + H + norm_params(m) + V  # transform dense, its norm, decoder bias
    if m.head == "bert-pretrain":
        pooler, nsp = H * H + H, 2 * H + 2
        return pooler + mlm + untied + nsp
    if m.head == "mlm":
        return mlm + untied
    if m.head == "lm":
        finals = (2 if m.arch == "enc-dec" else 1) if m.norm_position == "pre" else 0
        return finals * norm_params(m) + untied
    return 0  # memnet answer matrix is tied to the last output embedding; "none" has no head


def param_count(m: ModelSpec) -> int:
    """Total trainable parameters."""
    if m.arch == "memnet":
        return embedding_params(m)
    enc = m.layers * layer_params(m, cross_attention=False)
    dec = m.decoder_layers * layer_params(m, cross_attention=True)
    return embedding_params(m) + enc + dec + head_params(m)


def bert_tensor_shapes(hidden: int, ffn: int, layers: int, vocab: int, positions: int = 512,
                       type_vocab: int = 2) -> list[tuple[int, ...]]:
    """Parameter tensor shapes of a BERT encoder with its pretraining head (16 per layer; the decoder weight tied)."""
    H, Fd = hidden, ffn
    emb = [(vocab, H), (positions, H), (type_vocab, H), (H,), (H,)]
    layer = [(H, H), (H,)] * 4 + [(H,), (H,), (Fd, H), (Fd,), (H, Fd), (H,), (H,), (H,)]
    head = [(H, H), (H,), (H, H), (H,), (H,), (H,), (vocab,), (2, H), (2,)]
    return emb + layer * layers + head

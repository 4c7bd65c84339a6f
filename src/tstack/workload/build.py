"""(ModelSpec, RunSpec) -> Workload: the tuple of Ops one inference or training iteration launches.

The pipeline, one line per step:
    check_pair        the two specs fit together (sequence within positions, decode needs a decoder)
    embedding         token/position/type lookups, sum, norm, dropout
    layers            encoder / decoder / enc-dec / memory-network hops
    head              pooler+MLM+NSP, LM head or memory-network answer
    backward          reversed forward with each kernel's backward (002 Table 2b for GEMMs)
    recompute         forward of checkpointed segments again (002 §4)
    optimizer         mixed-precision copies, gradient norm, LAMB/Adam/SGD stages per layer
"""

from __future__ import annotations

import math
from dataclasses import replace

from tstack.errors import SpecError
from tstack.spec import ModelSpec, RunSpec
from tstack.workload import emit, layers
from tstack.workload import formulas as F
from tstack.workload import params as P
from tstack.workload.emit import Ctx, Step
from tstack.workload.fusion import sdpa
from tstack.workload.labels import ATTN_BGEMM, DR_RC_LN, EMBEDDING, LAMB, MASTER_COPY, SCALE_MASK_SM
from tstack.workload.layers import AttnShape
from tstack.workload.op import Op, OpKind

Workload = tuple[Op, ...]
OPTIMIZER_GROUP = {"lamb": LAMB, "adam": "Adam", "sgd": "SGD"}  # the 002 group name of each optimizer


def check_pair(model: ModelSpec, run: RunSpec) -> None:
    problems = []
    if model.position == "learned":
        longest = run.kv_len + 1 if run.phase == "decode" else max(run.seq, run.tgt_seq)
        if longest > model.max_positions:
            problems.append(f"seq={longest} exceeds max_positions={model.max_positions} of model {model.name!r}")
    if run.phase == "decode" and model.arch not in ("decoder", "enc-dec"):
        problems.append(f"phase='decode' needs a decoder model; {model.name!r} is arch {model.arch}")
    if run.tgt_seq != run.seq and model.arch != "enc-dec":
        problems.append(f"tgt_seq={run.tgt_seq} is only for enc-dec models; {model.name!r} is arch {model.arch}")
    if problems:
        raise SpecError(problems, "run")


def _emb_labels(group: str = EMBEDDING) -> dict[str, str]:
    return layers.labels("-", "embedding", group, "embedding", part="embedding")


def embedding(ctx: Ctx, S: int) -> list[Step]:
    """Lookups (and OPT's project_in of narrower word embeddings), their sum, and (BERT) the embedding LayerNorm
    and dropout."""
    m, B = ctx.model, ctx.run.batch
    T, L = B * S, _emb_labels()
    steps = [emit.embedding_lookup(ctx, "word_embeddings", T, m.vocab, L, m.embed_width)]
    if m.arch == "memnet":
        return steps
    if m.embed_dim:
        steps.append(emit.linear(ctx, "project_in", (m.hidden, T, m.embed_dim), L, False))
    lookups = len(steps)
    if m.position == "learned":
        steps.append(emit.embedding_lookup(ctx, "position_embeddings", T, m.max_positions + m.position_offset, L))
    if m.type_vocab:
        steps.append(emit.embedding_lookup(ctx, "token_type_embeddings", T, m.type_vocab, L))
    if len(steps) - lookups == 2:
        steps.append(emit.pointwise(ctx, "embedding-sum", T, m.hidden, L))
    elif len(steps) - lookups == 1:
        steps.append(emit.pointwise(ctx, "residual", T, m.hidden, L))
    elif m.position == "sinusoidal":
        steps.append(emit.pointwise(ctx, "position-add", T, m.hidden, L))
    if m.arch == "encoder":
        steps.append(emit.pointwise(ctx, m.norm, T, m.hidden, L))
    if ctx.dropout and m.arch in ("encoder", "enc-dec"):
        steps.append(emit.pointwise(ctx, "dropout", T, m.hidden, L))
    return steps


def embedded_lengths(model: ModelSpec, run: RunSpec) -> tuple[int, ...]:
    """Tokens per sequence that go through the embedding: one new token when decoding, one
    query per memory-network question, source and target for an enc-dec pass."""
    if run.phase == "decode" or model.arch == "memnet":
        return (1,)
    if model.arch == "enc-dec":
        return (run.seq, run.tgt_seq)
    return (run.seq,)


def _layer_names(prefix: str, n: int, collapse: bool) -> list[str]:
    return [f"{prefix}*"] if collapse else [f"{prefix}{i}" for i in range(n)]


def transformer(ctx: Ctx, collapse: bool) -> list[list[Step]]:
    """One list of steps per layer (a single list with count = N when collapsed)."""
    m, r = ctx.model, ctx.run
    if m.arch == "memnet":
        return [memnet_hop(_with_count(ctx, m.hops, collapse), name) for name in _layer_names("hop", m.hops, collapse)]
    if m.arch == "encoder":
        c = _with_count(ctx, m.layers, collapse)
        return [layers.encoder_layer(c, name, r.seq) for name in _layer_names("L", m.layers, collapse)]
    decode = r.phase == "decode"
    Sq = 1 if decode else (r.tgt_seq if m.arch == "enc-dec" else r.seq)
    self_shape = AttnShape(Sq, r.kv_len + 1 if decode else Sq, Sq)
    out = []
    cross = None
    if m.arch == "enc-dec":
        if not decode:  # in decode the encoder ran once before and its K/V are cached
            c = _with_count(ctx, m.layers, collapse)
            out += [layers.encoder_layer(c, name, r.seq) for name in _layer_names("E", m.layers, collapse)]
        cross = AttnShape(Sq, r.seq, 0 if decode else r.seq)
    n_dec = m.decoder_layers if m.arch == "enc-dec" else m.layers
    c = _with_count(ctx, n_dec, collapse)
    out += [layers.decoder_layer(c, name, self_shape, cross) for name in _layer_names("D" if cross else "L", n_dec, collapse)]
    return out


def _with_count(ctx: Ctx, n: int, collapse: bool) -> Ctx:
    return replace(ctx, count=n) if collapse else ctx


def memnet_hop(ctx: Ctx, layer: str) -> list[Step]:
    """One hop of an end-to-end memory network (003 Fig. 2a): u·Mᵀ, softmax, p·C, u + o.

    The B queries attend over one shared memory of S = ns slots, so each product is one GEMM
    (kind gemm, a Linear's backward rule: the memory is a weight-like operand shared by the batch).
    """
    m, B, S = ctx.model, ctx.run.batch, ctx.run.seq
    d = m.hidden

    def L(group: str, nlp: str, block: str = "attention") -> dict[str, str]:
        return layers.labels(layer, block, group, nlp, part="memory hops")

    return [
        emit.linear(ctx, "hop.score", (S, B, d), L(ATTN_BGEMM, "dot product"), False),
        emit.pointwise(ctx, "softmax", B, S, L(SCALE_MASK_SM, "softmax")),
        emit.linear(ctx, "hop.context", (d, B, S), L(ATTN_BGEMM, "weighted sum"), False),
        emit.pointwise(ctx, "residual", B, d, L(DR_RC_LN, "layernorm/residual", DR_RC_LN)),
    ]


def head(ctx: Ctx) -> list[Step]:
    m, r = ctx.model, ctx.run
    B, H, V = r.batch, m.hidden, m.vocab

    def L(group: str = "Output") -> dict[str, str]:
        return layers.labels("-", "output", group, "output", part="output")

    if m.head == "none":
        return []
    if m.head == "memnet-answer":
        return [emit.linear(ctx, "answer", (V, B, H), L(), False), emit.pointwise(ctx, "softmax", B, V, L())]
    if m.head == "lm":
        # Training scores every target token; inference only the last one per sequence.
        S = r.tgt_seq if m.arch == "enc-dec" else r.seq
        T = B * S if r.training else B
        T_all = B * (1 if r.phase == "decode" else S)
        steps = [emit.pointwise(ctx, m.norm, T_all, H, L())] if m.norm_position == "pre" else []
        if m.embed_dim:  # OPT-350m: project_out runs in the decoder, on every position
            steps.append(emit.linear(ctx, "project_out", (m.embed_dim, T_all, H), L(), False))
        steps.append(emit.linear(ctx, "lm_head", (V, T, m.embed_width), L(), False))
        if r.training:
            steps.append(emit.pointwise(ctx, "softmax", T, V, L()))  # log-softmax of the cross-entropy loss
        return steps
    # The MLM head scores run.mlm_fraction of the positions (BERT masks 15%; HF's heads score all, fraction 1).
    Tm = B * math.ceil(r.mlm_fraction * r.seq)
    steps = []
    if m.head == "bert-pretrain":  # [CLS] pooler (+ tanh, folded); NSP in training
        steps.append(emit.linear(ctx, "pooler", (H, B, H), L(), m.bias))
        if r.training:
            steps.append(emit.linear(ctx, "nsp", (2, B, H), L(), m.bias))
    if r.training or m.head == "mlm":  # RoBERTa / BertForMaskedLM ("mlm") have no pooler and no NSP
        steps += [
            emit.linear(ctx, "mlm.dense", (H, Tm, H), L(), False),
            emit.pointwise(ctx, layers.ACT_KERNEL[m.activation], Tm, H, L()),
            emit.pointwise(ctx, m.norm, Tm, H, L()),
            emit.linear(ctx, "mlm.decoder", (V, Tm, H), L(), m.bias),
        ]
    if r.training:
        steps.append(emit.pointwise(ctx, "softmax", Tm, V, L()))  # log-softmax of the cross-entropy loss
    return steps


def backward(layer_steps: list[list[Step]], segment: int) -> list[Op]:
    """Layers in reverse, each layer's backward kernels; checkpointed segments recompute first."""
    out: list[Op] = []
    n = len(layer_steps)
    for i in range(n - 1, -1, -1):
        if segment and (i == n - 1 or (i + 1) % segment == 0):
            start = (i // segment) * segment
            for steps in layer_steps[start:i + 1]:
                out += [emit.with_pass(s.fwd, "recompute") for s in steps]
        for s in reversed(layer_steps[i]):
            out += s.bwd
    return out


def optimizer(ctx: Ctx, groups: list[tuple[str, int, int]]) -> list[Op]:
    """Mixed-precision gradient/weight copies, the global gradient norm and the per-layer stages.

    ``groups`` lists (layer, parameters per instance, instances).
    """
    r = ctx.run
    name = r.optimizer
    group_label = OPTIMIZER_GROUP[name]
    mixed = r.precision != "fp32"
    total = sum(p * c for _, p, c in groups)
    ops: list[Op] = []

    def op(kind: str, kname: str, params: int, flops: int, traffic: int, layer: str, group: str, count: int) -> Op:
        labels = (("part", "optimizer"), ("layer", layer), ("block", "optimizer"), ("group", group),
                  ("nlpfast", "optimizer"), ("pass", "update"))
        dtype = ctx.gemm_dtype if kind == OpKind.COPY else "fp32"  # copies convert to/from the model's half dtype
        return Op(kind=kind, name=kname, dims=(("params", params),), dtype=dtype, flops=flops, bytes=traffic,
                  labels=labels, count=count, launch=ctx.launch)

    half = emit.DTYPE_BYTES[ctx.gemm_dtype]
    for layer, p, c in groups:
        if mixed:  # fp16/bf16 gradients → fp32 master gradients, unscaled (1 FLOP each)
            ops.append(op(OpKind.COPY, "grad-to-master", p, p, p * (half + 4), layer, MASTER_COPY, c))
    if name == "lamb":  # LAMB needs ‖g‖ over the whole model before any update (002 §3.2.3)
        ops.append(op(OpKind.REDUCTION, "lamb-global-norm", total, 2 * total, 4 * total, "-", group_label, 1))
    for layer, p, c in groups:
        for stage, cost in F.OPTIMIZER_STAGES[name]:
            traffic = 4 * p * (cost.reads + cost.writes)
            ops.append(op(OpKind.ELEMENTWISE, stage, p, cost.flops * p, traffic, layer, group_label, c))
        if name == "lamb":  # per-tensor ‖w‖ and ‖u‖ for the trust ratio
            ops.append(op(OpKind.REDUCTION, "lamb-norms", p, 4 * p, 8 * p, layer, group_label, c))
        if mixed:
            ops.append(op(OpKind.COPY, "master-to-model", p, 0, p * (4 + half), layer, MASTER_COPY, c))
    return ops


def param_groups(model: ModelSpec, layer_names: list[str], collapse: bool) -> list[tuple[str, int, int]]:
    """(layer, parameters, instances) per optimizer group, matching the layers built."""
    groups = [("-", P.embedding_params(model), 1)]
    if model.arch == "memnet":
        return groups
    for name in layer_names:
        cross = model.arch == "enc-dec" and name.startswith("D")
        count = (model.decoder_layers if cross else model.layers) if collapse else 1
        groups.append((name, P.layer_params(model, cross), count))
    if P.head_params(model):
        groups.append(("-", P.head_params(model), 1))
    return groups


def build(model: ModelSpec, run: RunSpec, collapse: bool = False, device: str = "",
          fuse_attention: bool = True) -> Workload:
    """All Ops of one iteration; ``collapse`` keeps one copy of identical layers with count = N.

    Under ``run.attention == "sdpa"`` each attention core becomes one fused kernel (workload.fusion.sdpa, tiled for
    the on-chip memory of the ``device`` preset); ``fuse_attention=False`` leaves its kernels unfused, for a caller
    that transforms them first (the multi-device model slices them by heads, then fuses).
    """
    ops = _build(model, run, collapse)
    return sdpa(ops, device) if fuse_attention and run.attention == "sdpa" else ops


def _build(model: ModelSpec, run: RunSpec, collapse: bool) -> Workload:
    check_pair(model, run)
    ctx = Ctx.of(model, run)
    emb = [s for S in embedded_lengths(model, run) for s in embedding(ctx, S)]
    body = transformer(ctx, collapse)
    out = head(ctx)
    fwd = [s.fwd for s in emb] + [s.fwd for steps in body for s in steps] + [s.fwd for s in out]
    if not run.training:
        return tuple(fwd)
    seg = run.segment_size(sum(steps[0].fwd.count for steps in body))  # layers, collapsed or not
    bwd = [op for s in reversed(out) for op in s.bwd] + backward(body, 0 if collapse else seg)
    if seg and collapse:  # every layer is recomputed once: one recompute copy with count = N
        bwd += [emit.with_pass(s.fwd, "recompute") for steps in body for s in steps]
    bwd += [op for s in reversed(emb) for op in s.bwd]
    names = [steps[0].fwd.label("layer") for steps in body]
    return tuple(fwd + bwd + optimizer(ctx, param_groups(model, names, collapse)))

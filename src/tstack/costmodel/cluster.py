"""Multi-device training as a cost-model backend: data, tensor, pipeline and sequence parallelism, activation
recomputation, ZeRO/FSDP sharding and gradient accumulation, on top of the single-device workload and device model.

The per-device compute is the one ``analyze`` uses: ``workload.build`` for one micro-batch, turned into the ops one
tensor-parallel rank runs by ``slice_workload`` (002 Fig. 10, Megatron-LM: Q/K/V and FC-1 split by columns, the
attention output projection and FC-2 by rows, the attention heads split, LayerNorm, dropout and residual replicated
unless sequence parallelism shards them), then costed by the device's backend (``costmodel.cost_workload``).
Communication comes from the network model (``hardware.network``). Composition, per device, per iteration:

    pipeline   = (m + (p − 1)/v) · t_stage       1F1B over m micro-batches; bubble (p − 1)/(v·m) of the steady part
    t_stage    = slowest stage's compute per micro-batch (its L/p layers, the embedding on the first, the head on
                 the last) + its tensor-parallel collectives (2 forward + 2 backward per layer, Megatron; 2 more
                 when the forward is recomputed in full; not overlapped, 002 §5.1) + 2·v point-to-point transfers
    data       = gradient all-reduce (ZeRO 1–2: reduce-scatter + all-gather; ZeRO-3/FSDP: parameter all-gathers in
                 forward and backward as well), either after the backward (overlap none) or overlapped layer by
                 layer with the backward (overlap layer: 002 §5.1, the maximum of computation and communication for
                 every pair of consecutive layers; the first layer's communication stays exposed)
    optimizer  = the optimizer's ops on this rank's parameters (1/tp of the sliced tensors; 1/dp more under ZeRO)
    experts    = with a Mixture-of-Experts model (ModelSpec ``experts``/``top_k``), a rank of an ep-way expert-parallel
                 group holds experts/ep expert FFNs and runs them on its T·top_k routed tokens (balanced routing; the
                 router GEMM and combine as the workload builds them), and each layer adds 2 forward + 2 backward
                 all-to-alls (dispatch, combine) of T·top_k hidden vectors over the ep ranks (not overlapped)

Memory per device follows Korthikanti et al. 2022 (§4): activations per layer s·b·h·(10 + 24/t + 5·a·s/(h·t)) bytes
in fp16 and its variants for sequence parallelism and selective / full recomputation; the first pipeline stage holds
min(m, p) micro-batches in flight, times (1 + (p − 1)/(p·v)) when interleaved. Weights, gradients and optimizer state
take 2 + 2 + 12 bytes per parameter in mixed precision (4 + 4 + 8 in fp32; SGD keeps one moment), sharded by ZeRO.

Model FLOPs, two figures: Megatron's formula (Narayanan et al. 2021, eq. 3 without recomputation,
72·B·s·l·h²·(1 + s/(6h) + V/(12·l·h)) per iteration for B sequences, which assumes F = 4h and full multi-head
attention), ``model_tflops_per_device``, kept for the Table 5 comparison; and the workload's own forward + backward
FLOPs without recomputation summed over its ops (``workload_model_flops``), ``workload_tflops_per_device``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from tstack.costmodel.backend import CostModel, cost_workload
from tstack.errors import SpecError
from tstack.hardware.device import DeviceSpec
from tstack.hardware.network import NetworkSpec, collective_seconds
from tstack.spec import ModelSpec, RunSpec
from tstack.workload import emit
from tstack.workload import formulas as F
from tstack.workload import params as P
from tstack.workload.build import build, optimizer
from tstack.workload.fusion import LABEL_JOIN, Profile, fuse, load_profile, sdpa
from tstack.workload.labels import ATTN_BGEMM, DR_RC_LN, SCALE_MASK_SM
from tstack.workload.layers import ACT_GROUP, routed_tokens
from tstack.workload.op import DTYPE_BYTES, Op, OpKind

RECOMPUTE = ("none", "selective", "full")
OVERLAP = ("none", "layer")
ZERO_STAGES = (0, 1, 2, 3)  # 3 is FSDP (full sharding)
COLUMN = ("q_proj", "k_proj", "v_proj", "fc1", "gate_proj", "up_proj")  # weight split by output columns
ROW = ("out_proj", "fc2", "down_proj")  # weight split by input rows; an all-reduce follows in forward
VOCAB = ("lm_head", "mlm.decoder")  # vocabulary-parallel output projections
COLUMN_NLPFAST = ("Q-Gen", "K/V-Gen", "linear trans-1")  # the bias-gradient reductions of column-split linears
ACT_GROUPS = frozenset(ACT_GROUP.values())


@dataclass(frozen=True)
class Layout:
    """How a training iteration is spread over dp·tp·pp devices."""

    dp: int = 1
    tp: int = 1
    pp: int = 1
    interleave: int = 1  # v: model chunks per pipeline rank (Megatron's interleaved 1F1B)
    micro_batch: int = 1
    global_batch: int = 0  # sequences per iteration; 0 means micro_batch·dp (no gradient accumulation)
    recompute: str = "none"
    seq_parallel: bool = False
    zero: int = 0
    overlap: str = "layer"
    ep: int = 1  # expert-parallel ranks inside each data-parallel group (a Mixture-of-Experts model)

    def __post_init__(self) -> None:
        if self.global_batch == 0 and isinstance(self.micro_batch, int) and isinstance(self.dp, int):
            object.__setattr__(self, "global_batch", self.micro_batch * self.dp)

    @property
    def gpus(self) -> int:
        return self.dp * self.tp * self.pp

    @property
    def micro_batches(self) -> int:
        """m: micro-batches per pipeline (and gradient-accumulation steps) per iteration."""
        return self.global_batch // (self.dp * self.micro_batch)


def layout_problems(model: ModelSpec, layout: Layout, seq: int) -> list[str]:
    """Every reason the layout cannot run the model, one line each (empty when it is legal)."""
    problems: list[str] = []
    lay = layout
    for name in ("dp", "tp", "pp", "interleave", "micro_batch", "global_batch", "ep"):
        value = getattr(lay, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            problems.append(f"{name}={value!r} must be an integer ≥ 1")
    if lay.recompute not in RECOMPUTE:
        problems.append(f"recompute={lay.recompute!r} is not one of {', '.join(RECOMPUTE)}")
    if lay.overlap not in OVERLAP:
        problems.append(f"overlap={lay.overlap!r} is not one of {', '.join(OVERLAP)}")
    if lay.zero not in ZERO_STAGES:
        problems.append(f"zero={lay.zero!r} is not one of 0, 1, 2, 3")
    if problems:
        return problems
    if (lay.tp > 1 or lay.pp > 1) and model.arch == "memnet":
        problems.append("tp > 1 and pp > 1 need an encoder or decoder model (a memory network has hops, not layers)")
    if lay.ep > 1 and not model.experts:
        problems.append(f"ep={lay.ep} needs a Mixture-of-Experts model (experts ≥ 1 in the model)")
    elif lay.dp % lay.ep or (model.experts and model.experts % lay.ep):
        problems.append(f"ep={lay.ep} must divide dp={lay.dp}" + (f" and experts={model.experts}" if model.experts else ""))
    problems += tp_problems(model, lay.tp)
    layers = total_layers(model)
    if layers % lay.pp:
        problems.append(f"pp={lay.pp} must divide the {layers} layers")
    elif (layers // lay.pp) % lay.interleave:
        problems.append(f"interleave={lay.interleave} must divide the {layers // lay.pp} layers per pipeline stage")
    if lay.interleave > 1 and lay.pp == 1:
        problems.append(f"interleave={lay.interleave} needs pp > 1")
    if lay.global_batch % (lay.dp * lay.micro_batch):
        problems.append(f"global_batch={lay.global_batch} must be a multiple of dp·micro_batch={lay.dp * lay.micro_batch}")
    if lay.seq_parallel and seq % lay.tp:
        problems.append(f"seq_parallel needs tp={lay.tp} to divide seq={seq}")
    return problems


def tp_problems(model: ModelSpec, tp: int) -> list[str]:
    """Why ``tp`` cannot slice the model: it must divide the heads and the FFN widths, and divide the KV heads or be
    a multiple of them (replicated); empty when it can."""
    problems = [f"tp={tp} must divide {name}={value}" for name, value in (
        ("heads", model.heads), ("ffn", model.ffn), ("shared_expert_ffn", model.shared_expert_ffn)) if value % tp]
    if model.kv_heads % tp and tp % model.kv_heads:
        problems.append(f"tp={tp} must divide kv_heads={model.kv_heads} or be a multiple of it (KV heads replicated)")
    return problems


def check_layout(model: ModelSpec, layout: Layout, seq: int) -> None:
    problems = layout_problems(model, layout, seq)
    if problems:
        raise SpecError(problems, "layout")


def total_layers(model: ModelSpec) -> int:
    return model.hops if model.arch == "memnet" else model.layers + model.decoder_layers


# ---------------------------------------------------------------- the tensor-sliced per-device workload

def _suffix(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def kv_heads_per_rank(model: ModelSpec, tp: int) -> int:
    """KV heads one of ``tp`` ranks holds: kv_heads/tp, or one (replicated) when tp is a multiple of kv_heads."""
    return model.kv_heads // tp if model.kv_heads % tp == 0 else 1


@dataclass(frozen=True)
class _Split:
    """How one rank's share of the model follows from the whole: tensor-parallel degree, query and KV heads per rank,
    and the expert groups (tokens, experts) an expert-parallel rank runs."""

    tp: int
    heads: int  # query heads of the whole model
    kv_heads: int
    kv_rank: int  # KV heads per rank
    sp: bool
    experts: int = 0
    top_k: int = 0
    ep: int = 1


def _sliced_mnk(op: Op, sp: _Split) -> tuple[int, int, int, int]:
    """(M, N, K, batch) of one rank's forward GEMM (Megatron's split, 002 Fig. 10)."""
    M, N, K, batch = op.gemm_shape
    tp = sp.tp
    if op.kind == OpKind.BGEMM:
        # batch = B·kv_heads, N = Sq·(heads/kv_heads): this rank's KV heads, each with its query heads
        group = sp.heads // sp.kv_heads
        return M, N // group * (sp.heads // tp // sp.kv_rank), K, batch // sp.kv_heads * sp.kv_rank
    if op.name in VOCAB:
        return math.ceil(M / tp), N, K, batch
    if _suffix(op.name) in ("k_proj", "v_proj"):
        return M // sp.kv_heads * sp.kv_rank, N, K, batch
    if _suffix(op.name) in COLUMN:
        return M // tp, N, K, batch
    if _suffix(op.name) in ROW:
        return M, N, K // tp, batch
    return M, N, K, batch


def _pointwise_split(op: Op, sp: _Split) -> tuple[int, int]:
    """(rows, cols) of one rank's element-wise or reduction kernel."""
    rows, cols = op.dim("rows"), op.dim("cols")
    group, part, tp = op.label("group"), op.label("part"), sp.tp
    kv = op.label("nlpfast") == "K/V-Gen"
    if part == "transformer":
        if group == SCALE_MASK_SM:
            return rows // tp, cols  # rows are B·heads·Sq
        if group in ACT_GROUPS or (group == "RoPE" and not kv):
            return rows, cols // tp
        if group == "RoPE" or (op.name == "bias-grad" and kv):
            return rows, cols // sp.kv_heads * sp.kv_rank
        if op.name == "bias-grad" and op.label("nlpfast") in COLUMN_NLPFAST:
            return rows, cols // tp
        if group == DR_RC_LN and sp.sp:
            return math.ceil(rows / tp), cols
        return rows, cols
    if part == "output" and op.name == "softmax" and cols > 2:
        return rows, math.ceil(cols / tp)  # the cross-entropy over this rank's slice of the vocabulary
    if part == "output" and sp.sp and op.name != "bias-grad":
        return math.ceil(rows / tp), cols  # the final norm and the head's element-wise kernels, sharded by sequence
    return rows, cols


def _expert_ops(ops: tuple[Op, ...]) -> list[bool]:
    """Which ops belong to the routed experts: in a forward (or recomputed) pass the ops between the router (group
    "Router") and the combine ("MoE combine"), in backward those between the combine and the router."""
    inside, out = False, []
    for op in ops:
        group, backward = op.label("group"), op.label("pass").startswith("bwd")
        if group == "Router":
            inside = not backward
        elif group == "MoE combine":
            inside = backward
        out.append(inside and group not in ("Router", "MoE combine"))
    return out


def _gemm_volume(op: Op) -> int:
    M, N, K, batch = op.gemm_shape
    return M * N * K * batch  # the same for a GEMM's forward and its two backward products


def _expert_groups(tokens: int, sp: _Split) -> list[tuple[int, int]]:
    """(tokens, experts) of one expert-parallel rank: its experts/ep experts share the T·top_k assignments of its T
    tokens (balanced routing: ep·T·top_k assignments of the group over all experts)."""
    return routed_tokens(tokens, sp.experts // sp.ep, sp.top_k)


def slice_workload(ops: tuple[Op, ...], tp: int, sp: bool = False, model: ModelSpec | None = None,
                   ep: int = 1) -> tuple[Op, ...]:
    """The ops one of ``tp`` tensor-parallel (and ``ep`` expert-parallel) ranks runs (Megatron-LM; 002 Fig. 10): a
    pure Op → Op transformation.

    GEMMs keep their kind and pass; a backward GEMM is derived from its sliced forward by the 002 Table 2b rules, so
    FLOPs and bytes follow the formulas the workload uses. Q and output projection split by query heads, K and V by
    KV heads (replicated when tp is a multiple of kv_heads); the attention B-GEMMs run this rank's heads (a fused
    attention kernel is formed from them after slicing: family_ops). Element-wise kernels shrink with the dimension
    that is split (heads for softmax, the FFN width for the activation); LayerNorm, dropout and residual stay whole
    (sharded along the sequence under ``sp``). Embedding lookups, the MoE router and combine stay whole; the
    optimizer ops are rebuilt separately. Under ``ep`` > 1 the routed experts' kernels become this rank's
    experts/ep experts at ep× the tokens each. ``model``
    gives the heads (without it, full multi-head attention and a dense FFN are assumed).
    """
    if tp == 1 and not sp and ep == 1:
        return ops
    if model is None:  # full multi-head attention: the attention B-GEMM batch is B·heads, split by tp
        split = _Split(tp, tp, tp, 1, sp)
    else:
        split = _Split(tp, model.heads, model.kv_heads, kv_heads_per_rank(model, tp), sp, model.experts, model.top_k, ep)
    expert = _expert_ops(ops) if split.experts else [False] * len(ops)
    forward: dict[tuple[str, str, int], tuple[int, int, int, int]] = {}
    for op in ops:
        if op.is_gemm and op.label("pass") == "fwd":
            forward[(op.label("layer"), op.name, _gemm_volume(op))] = op.gemm_shape
    out: list[Op] = []
    template: dict[tuple[str, str], int] = {}  # (layer, pass) -> the per-expert tokens of the first expert group
    for op, routed in zip(ops, expert):
        if routed and ep > 1:
            out += _rank_experts(op, forward, split, template)
            continue
        out.append(_sliced(op, forward, split))
    return tuple(out)


def _sliced(op: Op, forward: dict[tuple[str, str, int], tuple[int, int, int, int]], sp: _Split,
            tokens: int = 0) -> Op:
    """One op on this rank; ``tokens`` (> 0) replaces an expert kernel's per-expert token count."""
    if op.is_gemm:
        M, N, K, batch = forward[(op.label("layer"), op.name, _gemm_volume(op))]
        if tokens:
            N = tokens
        M, N, K, batch = _sliced_mnk(replace(op, dims=(("M", M), ("N", N), ("K", K), ("batch", batch))), sp)
        act, weight = F.GEMM_BACKWARD[op.kind](M, N, K)
        mnk = {"bwd-act": act, "bwd-weight": weight}.get(op.label("pass"), (M, N, K))
        width = DTYPE_BYTES[op.dtype]
        counts = F.gemm(*mnk, batch, width, width)
    elif op.kind == OpKind.COPY and op.name == "repeat-kv":  # K or V of this rank's KV heads, once per query head
        rows = op.dim("rows") // sp.kv_heads * sp.kv_rank
        repeat = sp.heads // sp.tp // sp.kv_rank
        counts = F.Counts(0, rows * op.dim("cols") * (1 + repeat) * DTYPE_BYTES[op.dtype],
                          (("rows", rows), ("cols", op.dim("cols")), ("repeat", repeat)))
    elif op.kind in (OpKind.ELEMENTWISE, OpKind.REDUCTION) and op.dim("rows"):
        rows, cols = _pointwise_split(op, sp)
        rows = tokens or rows
        if (rows, cols) == (op.dim("rows"), op.dim("cols")):
            return op
        param_bytes = 4 if op.name == "bias-grad" else _param_bytes(op.dtype)
        counts = F.pointwise(op.name, rows, cols, DTYPE_BYTES[op.dtype], param_bytes)
    else:
        return op
    return replace(op, dims=counts.dims, flops=counts.flops, bytes=counts.bytes)


def _op_tokens(op: Op, forward: dict[tuple[str, str, int], tuple[int, int, int, int]]) -> int:
    """The per-expert token count of an expert kernel (its forward GEMM's N, or its rows)."""
    if op.is_gemm:
        return forward[(op.label("layer"), op.name, _gemm_volume(op))][1]
    return op.dim("rows")


def _rank_experts(op: Op, forward: dict[tuple[str, str, int], tuple[int, int, int, int]], sp: _Split,
                  template: dict[tuple[str, str], int]) -> list[Op]:
    """An expert kernel of the whole workload → the same kernel for this expert-parallel rank's expert groups. The
    workload's first expert group (per layer and pass) is the template; the others are dropped, their tokens being
    part of the rank's groups."""
    n = _op_tokens(op, forward)
    key = (op.label("layer"), op.label("pass"))
    first = template.setdefault(key, n)
    if n != first:
        return []
    tokens_fwd = _router_tokens(op, forward)
    q, rem = divmod(tokens_fwd * sp.top_k, sp.experts)
    layer_count = op.count // (rem if n == q + 1 else sp.experts - rem)
    return [replace(_sliced(op, forward, sp, tokens), count=layer_count * c)
            for tokens, c in _expert_groups(tokens_fwd, sp)]


def _router_tokens(op: Op, forward: dict[tuple[str, str, int], tuple[int, int, int, int]]) -> int:
    """T: the tokens of this rank's micro-batch the layer's router scores (its forward GEMM's N)."""
    layer = op.label("layer")
    return next(shape[1] for (where, name, _), shape in forward.items() if where == layer and name == "moe.router")


def _param_bytes(act_dtype: str) -> int:
    """Bytes of the weights an element-wise kernel reads: the model's half dtype, or fp32 (emit.Ctx.param_bytes)."""
    return DTYPE_BYTES[act_dtype] if act_dtype in ("fp16", "bf16") else 4


def layer_params_tp(model: ModelSpec, tp: int, cross: bool = False) -> int:
    """Parameters one tensor-parallel rank holds of one layer (Megatron): the weights and the Q/K/V and FC-1 biases
    split (K and V by KV heads, replicated when tp is a multiple of kv_heads), the output-projection and FC-2 biases,
    the MoE router and the norms whole; a MoE layer's every expert. ``tp`` = 1 gives ``params.layer_params``."""
    H, Hq, dh = model.hidden, model.q_hidden, model.head_dim
    kv_rank = dh * kv_heads_per_rank(model, tp)
    attentions = 2 if cross else 1
    qkv_bias = model.bias or model.qkv_bias
    attn = (2 * H * Hq + (Hq if qkv_bias else 0)) // tp + (2 * H + (2 if qkv_bias else 0)) * kv_rank
    attn += H if model.bias else 0
    whole = (attentions + 1) * P.norm_params(model)
    if model.experts:
        ffn = model.experts * (ffn_params_tp(model, tp) + H)  # the experts and the router's E×H
        if model.shared_expert_ffn:
            ffn += ffn_params_tp(model, tp, model.shared_expert_ffn) + H  # and its 1-wide sigmoid gate
    else:
        ffn = ffn_params_tp(model, tp)
    return attentions * attn + ffn + whole


def ffn_params_tp(model: ModelSpec, tp: int, width: int = 0) -> int:
    """One FFN's (one expert's) parameters on a tensor-parallel rank: weights and FC-1 biases split, FC-2 bias whole."""
    Fd = width or model.ffn
    fc1_bias, fc2_bias = ((2 if model.gated_ffn else 1) * Fd, model.hidden) if model.bias else (0, 0)
    return ((3 if model.gated_ffn else 2) * model.hidden * Fd + fc1_bias) // tp + fc2_bias


def embedding_params_tp(model: ModelSpec, tp: int) -> int:
    """The embedding with its word table split by vocabulary (Megatron's vocabulary-parallel embedding)."""
    return P.embedding_params(model) - model.vocab * model.embed_width + math.ceil(model.vocab / tp) * model.embed_width


def head_params_tp(model: ModelSpec, tp: int) -> int:
    untied = 0 if model.tie_embeddings else model.vocab * model.embed_width
    bias = model.vocab if model.head == "bert-pretrain" else 0
    return P.head_params(model) - untied - bias + (untied + bias) // tp


# ---------------------------------------------------------------- per-family costs (one workload build each)

@dataclass(frozen=True)
class Family:
    """Seconds per micro-batch on one rank for one (tp, micro-batch, recompute, sequence-parallel) choice; all that
    the cheaper layout choices (dp, pp, interleave, ZeRO, overlap, global batch) combine without a new build."""

    layers: int
    layer_fwd: float
    layer_bwd: float  # with recomputation
    emb_fwd: float
    emb_bwd: float
    head_fwd: float
    head_bwd: float
    groups: dict[str, tuple[float, float, float]]  # 002 group -> (per layer, embedding, head) compute seconds
    opt_layer: float
    opt_rest: float  # optimizer seconds of the embedding, head and global steps
    opt_groups: dict[str, tuple[float, float]]  # group -> (per layer, rest)
    params_layer: int
    params_emb: int
    params_head: int
    tied_copy: int  # the word table the last stage holds too when pp > 1 and the head is tied
    tp_collectives_fwd: float  # per layer: all-reduces (or reduce-scatter + all-gather pairs) in forward
    tp_collectives_bwd: float  # per layer, in backward (recomputation included)
    tp_collectives_emb: float  # around the vocabulary-parallel embedding and head, per micro-batch
    tp_message_bytes: float  # one activation all-reduce
    p2p_bytes: float  # one activation sent between pipeline stages (scattered over the tp ranks)
    act_layer_bytes: float  # activation memory per layer per micro-batch (Korthikanti et al. 2022)
    act_head_bytes: float  # logits of the cross-entropy on the last stage
    weight_bytes: int
    grad_bytes: int
    optim_bytes: int
    params_ffn: int = 0  # one expert's FFN on this tensor-parallel rank (a MoE layer holds experts/ep of them)
    experts: int = 1
    a2a_collectives: float = 0.0  # all-to-alls per MoE layer and micro-batch (dispatch and combine, fwd and bwd)
    a2a_bytes: float = 0.0  # the routed tokens of one all-to-all


def _run(run: RunSpec, micro_batch: int, recompute: str) -> RunSpec:
    return run.replace(mode="train", batch=micro_batch, checkpoint="every-1" if recompute == "full" else "none")


def family_ops(model: ModelSpec, run: RunSpec, tp: int, micro_batch: int, recompute: str,
               sp: bool, ep: int = 1, fusion: str | Path | Profile | None = None, device: str = "",
               ) -> tuple[Op, ...]:
    """One rank's ops for one micro-batch: the sliced workload, selective recomputation, this rank's optimizer;
    then the fused attention kernel (``--attention sdpa``) and ``fusion`` (a workload.fusion profile) applied to them,
    as ``analyze`` applies them to its workload (``device`` names the preset whose on-chip memory a fused attention
    kernel tiles for). The attention cores are sliced by heads before they are fused."""
    r = _run(run, micro_batch, recompute)
    ops = tuple(op for op in build(model, r, collapse=True, fuse_attention=False) if op.label("part") != "optimizer")
    ops = slice_workload(ops, tp, sp, model, ep)
    profile = None if fusion is None else load_profile(fusion)
    if recompute == "selective" and not _fused_attention(run, profile):
        # the attention core again before its backward (Korthikanti et al. 2022 §5); a fused attention kernel
        # recomputes its scores inside its own backward already, so it is not run twice
        ops += tuple(emit.with_pass(op, "recompute") for op in ops if op.label("pass") == "fwd"
                     and op.label("part") == "transformer" and op.label("group") in (ATTN_BGEMM, SCALE_MASK_SM))
    groups = [("-", embedding_params_tp(model, tp), 1)]
    names = sorted({op.label("layer") for op in ops if op.label("part") == "transformer"})
    for name in names:
        cross = model.arch == "enc-dec" and name.startswith("D")
        count = model.decoder_layers if cross else model.layers
        groups.append((name, layer_params_tp(model, tp, cross), count))
    if P.head_params(model):
        groups.append(("-", head_params_tp(model, tp), 1))
    if model.arch == "memnet":
        groups = groups[:1]
    ops += tuple(optimizer(emit.Ctx.of(model, r), groups))
    if run.attention == "sdpa":
        ops = sdpa(ops, device)
    return ops if profile is None else fuse(ops, profile, device)


def _fused_attention(run: RunSpec, profile: Profile | None) -> bool:
    """Whether a fused attention kernel runs the attention core (``--attention sdpa`` or the profile's rule)."""
    return run.attention == "sdpa" or (profile is not None and profile.attention is not None)


def activation_bytes_per_layer(model: ModelSpec, seq: int, micro_batch: int, tp: int, sp: bool, recompute: str,
                               act_bytes: int, fused_attention: bool = False) -> float:
    """Korthikanti et al. 2022 eq. 1–6 (fp16 values: s·b·h·(34 + 5·a·s/h) for one unsliced GPT layer), generalized
    to an FFN of width F (the 16 of 34 is 4F/h; 8F/h for a gated FFN; × top_k routed copies in a MoE, plus its shared
    expert) and scaled by the activation width / 2. ``fused_attention`` (``--attention sdpa`` or a fusion profile's
    FlashAttention): the kernel keeps no score, softmax or dropout mask (the 5·a·s/h term) but one fp32 log-sum-exp
    per query and head: s·b·a·4 bytes, sliced by tp."""
    s, b, h, a = seq, micro_batch, model.hidden, model.heads
    mlp_sliced = (8 if model.gated_ffn else 4) * (model.ffn * max(1, model.top_k) + model.shared_expert_ffn) / h
    replicated, sliced, attn = 10.0, 8.0 + mlp_sliced, 5.0 * a * s / h
    if recompute == "full":
        per = 2.0 / (tp if sp else 1)
    else:
        core = 0.0 if recompute == "selective" or fused_attention else attn / tp
        per = (replicated / (tp if sp else 1)) + sliced / tp + core
    stats = s * b * a * 4 / tp if fused_attention and recompute != "full" else 0.0
    return s * b * h * per * act_bytes / 2 + stats


def all_to_all_bytes(model: ModelSpec, tokens: int, act_bytes: int, shards: int = 1) -> float:
    """Bytes one rank puts into one MoE all-to-all (dispatch or combine): each of its ``tokens`` hidden vectors goes
    to top_k experts (and comes back), T·top_k·h elements, /tp when sequence parallelism shards the tokens."""
    return float(tokens * model.top_k * model.hidden * act_bytes / shards) if model.experts else 0.0


@lru_cache(maxsize=256)
def workload_flops(model: ModelSpec, run: RunSpec, micro_batch: int) -> float:
    """Forward + backward FLOPs of one micro-batch of the whole (unsliced) workload, summed over its ops, without
    recomputation and without the optimizer: the workload-exact model FLOPs (GQA, gated FFN, experts as built). A
    fused attention kernel's backward recomputes its scores, so its FLOPs are counted unfused."""
    ops = build(model, _run(run, micro_batch, "none"), collapse=True, fuse_attention=False)
    return float(sum(op.flops * op.count for op in ops if op.label("part") != "optimizer"))


def family(model: ModelSpec, run: RunSpec, device: DeviceSpec, tp: int, micro_batch: int, recompute: str,
           sp: bool, cost_model: CostModel | None = None, ep: int = 1,
           fusion: str | Path | Profile | None = None) -> Family:
    """Cost one family: build, slice, fuse (``fusion``) and cost its workload once.

    A multi-tensor optimizer kernel (fusion) spans the layers and the embedding and head parameters: its time is
    split between them in proportion to their parameters on this rank (so a pipeline stage gets its layers' share)."""
    profile = None if fusion is None else load_profile(fusion)
    ops, costs = cost_workload(family_ops(model, run, tp, micro_batch, recompute, sp, ep, profile, device.name),
                               device, cost_model)
    L = total_layers(model)
    params_layer, params_emb, params_head = layer_params_tp(model, tp), embedding_params_tp(model, tp), head_params_tp(model, tp)
    p_layers, p_rest = L * params_layer, params_emb + params_head
    part: dict[tuple[str, str], float] = {}
    groups: dict[str, list[float]] = {}
    opt_groups: dict[str, list[float]] = {}
    row_fwd = 0
    for op, c in zip(ops, costs):
        where = op.label("part")
        pass_ = "fwd" if op.label("pass") == "fwd" else "bwd"
        if where == "optimizer":
            layers = op.label("layer").split(LABEL_JOIN)
            to_layers = 0.0 if layers == ["-"] else 1.0 if "-" not in layers else p_layers / (p_layers + p_rest)
            slots = opt_groups.setdefault(op.label("group"), [0.0, 0.0])
            slots[0] += c.seconds * to_layers / L
            slots[1] += c.seconds * (1.0 - to_layers)
            continue
        key = "transformer" if where in ("transformer", "memory hops") else "embedding" if where == "embedding" else "output"
        part[(key, pass_)] = part.get((key, pass_), 0.0) + c.seconds
        slot = {"transformer": 0, "embedding": 1, "output": 2}[key]
        groups.setdefault(op.label("group"), [0.0, 0.0, 0.0])[slot] += c.seconds / (L if slot == 0 else 1)
        if op.is_gemm and op.label("pass") == "fwd" and where == "transformer" and _suffix(op.name) in ROW:
            row_fwd += op.count
    act = DTYPE_BYTES[emit.ACT_DTYPE[run.precision]]
    mixed = run.precision != "fp32"
    tokens = micro_batch * run.seq
    per_layer = row_fwd / L if L else 0.0
    fwd_collectives = per_layer if tp > 1 else 0.0
    bwd_collectives = fwd_collectives * (2 if recompute == "full" else 1)
    moments = 1 if run.optimizer == "sgd" else 2
    get = part.get
    return Family(
        layers=L, layer_fwd=get(("transformer", "fwd"), 0.0) / L, layer_bwd=get(("transformer", "bwd"), 0.0) / L,
        emb_fwd=get(("embedding", "fwd"), 0.0), emb_bwd=get(("embedding", "bwd"), 0.0),
        head_fwd=get(("output", "fwd"), 0.0), head_bwd=get(("output", "bwd"), 0.0),
        groups={g: (v[0], v[1], v[2]) for g, v in groups.items()},
        opt_layer=sum(v[0] for v in opt_groups.values()), opt_rest=sum(v[1] for v in opt_groups.values()),
        opt_groups={g: (v[0], v[1]) for g, v in opt_groups.items()},
        params_layer=params_layer, params_emb=params_emb, params_head=params_head,
        tied_copy=math.ceil(model.vocab / tp) * model.hidden if model.tie_embeddings and model.head == "lm" else 0,
        tp_collectives_fwd=fwd_collectives, tp_collectives_bwd=bwd_collectives,
        tp_collectives_emb=2.0 if tp > 1 and model.head in ("lm", "bert-pretrain") else 0.0,
        tp_message_bytes=float(tokens * model.hidden * act), p2p_bytes=float(tokens * model.hidden * act / tp),
        act_layer_bytes=activation_bytes_per_layer(
            model, run.seq, micro_batch, tp, sp, recompute, act,
            _fused_attention(run, profile)),
        act_head_bytes=float(4 * tokens * math.ceil(model.vocab / tp)) if model.head in ("lm", "bert-pretrain") else 0.0,
        weight_bytes=2 if mixed else 4, grad_bytes=2 if mixed else 4,
        optim_bytes=(4 if mixed else 0) + 4 * moments,
        params_ffn=ffn_params_tp(model, tp) if model.experts else 0, experts=max(1, model.experts),
        a2a_collectives=(4.0 + (2.0 if recompute == "full" else 0.0)) if model.experts else 0.0,
        a2a_bytes=all_to_all_bytes(model, tokens, act, tp if sp else 1),
    )


# ---------------------------------------------------------------- composing a layout (vectorized over layouts)

@lru_cache(maxsize=4096)
def _linear_collective(net: NetworkSpec, collective: str, n: int, stride: int) -> tuple[float, float]:
    """(latency seconds, seconds per byte): every algorithm's time is affine in the buffer size."""
    t1 = collective_seconds(net, collective, 1e9, n, stride)
    t2 = collective_seconds(net, collective, 2e9, n, stride)
    slope = (t2 - t1) / 1e9
    return t1 - slope * 1e9, slope


def comm_seconds(net: NetworkSpec, collective: str, nbytes: Any, n: Any, stride: Any) -> Any:
    """collective_seconds over numpy arrays of buffer sizes, group sizes and strides."""
    nbytes, n, stride = np.broadcast_arrays(np.asarray(nbytes, float), np.asarray(n), np.asarray(stride))
    out = np.zeros(nbytes.shape)
    for key in set(zip(n.ravel().tolist(), stride.ravel().tolist())):
        if key[0] <= 1:
            continue
        a, b = _linear_collective(net, collective, *key)
        mask = (n == key[0]) & (stride == key[1]) & (nbytes > 0)
        out[mask] = a + b * nbytes[mask]
    return out


def _overlapped(first: Any, bwd_layer: Any, last: Any, comm_first: Any, comm_layer: Any, comm_last: Any,
                layers: Any) -> Any:
    """Exposed communication of 002 §5.1: a layer's gradients go out while the next layer (in backward order) computes,
    time = b₀ + Σ max(bᵢ, gᵢ₋₁) + g_last; here the head (b₀, g₀), ``layers`` equal layers, then the embedding."""
    total = (first + np.maximum(bwd_layer, comm_first) + (layers - 1) * np.maximum(bwd_layer, comm_layer)
             + np.maximum(last, comm_layer) + comm_last)
    return total - (first + layers * bwd_layer + last)


def compose(fam: Family, net: NetworkSpec, dp: Any, tp: int, pp: Any, interleave: Any, micro_batches: Any,
            zero: Any, overlap_layer: Any, ep: Any = 1) -> dict[str, Any]:
    """Seconds and bytes per device for arrays of layouts of one family (numpy broadcasting; scalars work too)."""
    dp, pp, v, m, ep = (np.asarray(x) for x in (dp, pp, interleave, micro_batches, ep))
    zero, ovl = np.asarray(zero), np.asarray(overlap_layer, bool)
    per_stage = fam.layers / pp
    # A MoE layer holds experts/ep FFNs; its optimizer work grows with its parameters.
    expert_params = fam.experts / ep * fam.params_ffn
    params_layer = fam.params_layer - fam.experts * fam.params_ffn + expert_params
    opt_layer = fam.opt_layer * params_layer / fam.params_layer if fam.params_layer else fam.opt_layer
    one_stage = np.where(pp == 1, 1.0, 0.0)  # with one stage the embedding and head are on the same rank
    # Compute per micro-batch on the first stage (embedding) and the last (head); the slowest sets the pace.
    t_first_f = per_stage * fam.layer_fwd + fam.emb_fwd + one_stage * fam.head_fwd
    t_first_b = per_stage * fam.layer_bwd + fam.emb_bwd + one_stage * fam.head_bwd
    t_last_f = per_stage * fam.layer_fwd + fam.head_fwd + one_stage * fam.emb_fwd
    t_last_b = per_stage * fam.layer_bwd + fam.head_bwd + one_stage * fam.emb_bwd
    last_slower = (t_last_f + t_last_b) > (t_first_f + t_first_b)
    compute = np.maximum(t_first_f + t_first_b, t_last_f + t_last_b)
    tp_one = comm_seconds(net, "all-reduce", fam.tp_message_bytes, tp, 1)
    tp_comm = tp_one * (per_stage * (fam.tp_collectives_fwd + fam.tp_collectives_bwd)
                        + fam.tp_collectives_emb * np.where(pp == 1, 1.0, 0.5))  # embedding on the first, head on the last
    p2p = np.where(pp > 1, 2 * v * comm_seconds(net, "p2p", fam.p2p_bytes, 2, tp * dp), 0.0)
    a2a = per_stage * fam.a2a_collectives * comm_seconds(net, "all-to-all", fam.a2a_bytes, ep, tp)
    stage = compute + tp_comm + p2p + a2a
    steady = m * stage
    bubble = (pp - 1) / v * stage
    # Data parallelism: the rank's gradients (its stage's parameters), ZeRO's gathers.
    params_first = per_stage * params_layer + fam.params_emb + one_stage * fam.params_head
    params_last = per_stage * params_layer + fam.params_head + (1 - one_stage) * fam.tied_copy + one_stage * fam.params_emb
    params = np.maximum(params_first, params_last)
    head_here = last_slower | (pp == 1)  # the slowest stage's backward: head (if it has it), layers, embedding
    emb_here = ~last_slower | (pp == 1)
    g_layer = params_layer * fam.grad_bytes
    g_first = np.where(head_here, (fam.params_head + (1 - one_stage) * fam.tied_copy) * fam.grad_bytes, 0.0)
    g_last = np.where(emb_here, fam.params_emb * fam.grad_bytes, 0.0)
    sharded = zero >= 1

    def reduce(nbytes: Any, n: Any = dp, stride: Any = tp) -> Any:
        return np.where(sharded, comm_seconds(net, "reduce-scatter", nbytes, n, stride),
                        comm_seconds(net, "all-reduce", nbytes, n, stride))

    def gather(nbytes: Any) -> Any:
        return comm_seconds(net, "all-gather", nbytes, dp, tp)

    b_first, b_last = np.where(head_here, fam.head_bwd, 0.0), np.where(emb_here, fam.emb_bwd, 0.0)
    r_first, r_last = reduce(g_first), reduce(g_last)
    if fam.experts > 1:  # the experts' gradients are reduced over the dp/ep replicas of each expert
        expert_bytes = expert_params * fam.grad_bytes
        r_layer = reduce(g_layer - expert_bytes) + reduce(expert_bytes, dp // ep, tp * ep)
    else:
        r_layer = reduce(g_layer)
    hidden = _overlapped(b_first, fam.layer_bwd, b_last, r_first, r_layer, r_last, per_stage)
    dp_grad = np.where(ovl, hidden, r_first + per_stage * r_layer + r_last)
    # ZeRO 1–2 gather the updated shards after the step; ZeRO-3/FSDP gathers every layer's parameters in forward
    # and again in backward for each micro-batch (prefetched one layer ahead under overlap), and the rest whole.
    w_all, w_layer = params * fam.weight_bytes, params_layer * fam.weight_bytes
    ag_layer = gather(w_layer)
    gather_f = np.where(ovl, ag_layer + (per_stage - 1) * np.maximum(0.0, ag_layer - fam.layer_fwd), per_stage * ag_layer)
    gather_b = np.where(ovl, ag_layer + (per_stage - 1) * np.maximum(0.0, ag_layer - fam.layer_bwd), per_stage * ag_layer)
    zero3 = m * (gather_f + gather_b + 2 * gather(w_all - per_stage * w_layer))
    gathers = np.where(zero == 3, zero3, np.where(sharded, gather(w_all), 0.0))
    rest_params = fam.params_emb + fam.params_head
    rate = fam.opt_rest / rest_params if rest_params else 0.0
    opt = (per_stage * opt_layer + rate * (params - per_stage * params_layer)) / np.where(sharded, dp, 1)
    seconds = steady + bubble + dp_grad + gathers + opt
    # Memory of the rank that holds the most.
    in_flight = np.minimum(m, pp) * np.where(v > 1, 1 + (pp - 1) / (pp * v), 1.0)
    act = np.maximum(per_stage * fam.act_layer_bytes * in_flight, per_stage * fam.act_layer_bytes + fam.act_head_bytes)
    weights = params * fam.weight_bytes / np.where(zero == 3, dp, 1)
    grads = params * fam.grad_bytes / np.where(zero >= 2, dp, 1)
    optim = params * fam.optim_bytes / np.where(sharded, dp, 1)
    return {"seconds": seconds, "compute": m * compute, "tp_comm": m * tp_comm, "p2p": m * p2p, "ep_a2a": m * a2a,
            "bubble": bubble, "params_layer": params_layer * np.ones_like(seconds),
            "dp_grad": dp_grad, "zero_gather": gathers, "optimizer": opt, "stage_compute": compute,
            "last_slower": last_slower, "params": params, "weights": weights, "gradients": grads, "optim": optim,
            "activations": act, "memory": weights + grads + optim + act}


def model_flops(model: ModelSpec, seq: int, sequences: int) -> float:
    """Megatron's model FLOPs of one iteration (Narayanan et al. 2021, eq. 3, no recomputation counted):
    72·B·s·l·h²·(1 + s/(6h) + V/(12·l·h)) = 3·B·s·(l·(24h² + 4sh) + 2hV); a MoE's FFN term 16h² counts top_k times.
    It assumes F = 4h, an ungated FFN and full multi-head attention; ``workload_flops`` is exact for the model."""
    s, h, L, V = seq, model.hidden, total_layers(model), model.vocab
    top_k = max(1, model.top_k)
    return 3.0 * sequences * s * (L * ((8 + 16 * top_k) * h * h + 4 * s * h) + 2 * h * V)


# ---------------------------------------------------------------- one layout, with its breakdown

@dataclass(frozen=True)
class ClusterResult:
    """One layout's time and memory per device, with the breakdown the records give."""

    model: ModelSpec
    run: RunSpec  # seq, precision and optimizer (batch is the micro-batch)
    device: DeviceSpec
    network: NetworkSpec
    layout: Layout
    family: Family
    values: dict[str, float]

    @property
    def seconds(self) -> float:
        return self.values["seconds"]

    @property
    def fits(self) -> bool:
        return self.values["memory"] <= self.device.memory_capacity

    @property
    def model_tflops_per_device(self) -> float:
        """Megatron's formula (Narayanan et al. 2021), as Korthikanti et al. 2022 Table 5 reports it."""
        flops = model_flops(self.model, self.run.seq, self.layout.global_batch)
        return flops / (self.seconds * self.layout.gpus) / 1e12

    @property
    def workload_flops_per_iteration(self) -> float:
        lay = self.layout
        return workload_flops(self.model, self.run, lay.micro_batch) * lay.global_batch / lay.micro_batch

    @property
    def workload_tflops_per_device(self) -> float:
        """The workload's own forward + backward FLOPs (summed over its ops, no recomputation) per device-second."""
        return self.workload_flops_per_iteration / (self.seconds * self.layout.gpus) / 1e12

    def memory(self) -> dict[str, float]:
        v = self.values
        return {"weights": v["weights"], "gradients": v["gradients"], "optimizer": v["optim"],
                "activations": v["activations"], "total": v["memory"]}

    def summary(self) -> dict[str, Any]:
        lay = self.layout
        return {"model": self.model.name, "device": self.device.name, "network": self.network.name, "gpus": lay.gpus,
                "dp": lay.dp, "tp": lay.tp, "pp": lay.pp, "interleave": lay.interleave, "micro_batch": lay.micro_batch,
                "global_batch": lay.global_batch, "micro_batches": lay.micro_batches, "recompute": lay.recompute,
                "seq_parallel": lay.seq_parallel, "zero": lay.zero, "overlap": lay.overlap, "seq": self.run.seq,
                "precision": self.run.precision, "optimizer": self.run.optimizer,
                "seconds_per_iteration": self.seconds, "model_tflops_per_device": self.model_tflops_per_device,
                "model_flops_per_iteration": model_flops(self.model, self.run.seq, lay.global_batch),
                "workload_tflops_per_device": self.workload_tflops_per_device,
                "workload_flops_per_iteration": self.workload_flops_per_iteration,
                "experts": self.model.experts, "top_k": self.model.top_k,
                "ep": lay.ep,
                "memory_bytes_per_device": self.memory(), "memory_capacity_bytes": self.device.memory_capacity,
                "fits": self.fits,
                "bubble_fraction": (lay.pp - 1) / (lay.interleave * lay.micro_batches)}

    def records(self) -> list[dict[str, Any]]:
        """Seconds per iteration on the slowest rank, by component (compute, communication, bubble, optimizer) and
        002 group; they add up to ``seconds``."""
        fam, v, lay = self.family, self.values, self.layout
        m, per_stage = lay.micro_batches, fam.layers / lay.pp
        head_here = lay.pp == 1 or bool(v["last_slower"])
        emb_here = lay.pp == 1 or not bool(v["last_slower"])
        rows: list[dict[str, Any]] = []

        def add(component: str, part: str, group: str, seconds: float) -> None:
            if seconds > 0:
                rows.append({"component": component, "part": part, "group": group, "seconds": seconds,
                             "share": seconds / self.seconds})

        for slot, part, here in ((1, "embedding", emb_here), (0, "transformer", True), (2, "output", head_here)):
            for group, per in fam.groups.items():
                scale = per_stage if slot == 0 else float(here)
                add("compute", part, group, m * per[slot] * scale)
        sp = lay.seq_parallel and lay.tp > 1
        add("communication", "communication", "TP reduce-scatter+all-gather" if sp else "TP all-reduce", v["tp_comm"])
        add("communication", "communication", "PP p2p", v["p2p"])
        add("communication", "communication", "EP all-to-all", v["ep_a2a"])
        add("communication", "communication", "DP reduce-scatter" if lay.zero else "DP all-reduce", v["dp_grad"])
        add("communication", "communication", "ZeRO all-gather", v["zero_gather"])
        add("bubble", "bubble", "pipeline bubble", v["bubble"])
        rest = fam.params_emb + fam.params_head
        rest_fraction = (v["params"] - per_stage * v["params_layer"]) / rest if rest else 0.0
        layer_scale = v["params_layer"] / fam.params_layer if fam.params_layer else 1.0  # experts/ep FFNs
        shard = lay.dp if lay.zero else 1
        for group, per in fam.opt_groups.items():
            add("optimizer", "optimizer", group, (per_stage * per[0] * layer_scale + per[1] * rest_fraction) / shard)
        return rows


def evaluate(model: ModelSpec, run: RunSpec, device: DeviceSpec, network: NetworkSpec, layout: Layout,
             cost_model: CostModel | None = None, fusion: str | Path | Profile | None = None) -> ClusterResult:
    """Time and memory per device of one training iteration under ``layout`` (``run`` gives seq, precision,
    optimizer and dropout; its batch is replaced by the layout's micro-batch). A Mixture-of-Experts model spreads its
    experts over ``layout.ep`` ranks with all-to-alls (2 forward, 2 backward per layer; 2 more under full
    recomputation) of the routed tokens; ``fusion`` (a workload.fusion profile) fuses each rank's sliced workload."""
    check_layout(model, layout, run.seq)
    fam = family(model, run, device, layout.tp, layout.micro_batch, layout.recompute,
                 layout.seq_parallel and layout.tp > 1, cost_model, layout.ep, fusion)
    values = compose(fam, network, layout.dp, layout.tp, layout.pp, layout.interleave, layout.micro_batches,
                     layout.zero, layout.overlap == "layer", layout.ep)
    plain = {k: float(np.asarray(x)) for k, x in values.items()}
    return ClusterResult(model, _run(run, layout.micro_batch, layout.recompute), device, network, layout, fam, plain)

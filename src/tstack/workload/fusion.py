"""Fusion as a pure pass over the workload: ``fuse(ops, profile) -> ops``, with the rules as data.

A profile (``presets/fusion/*.yaml``: none, apex, inductor, flash) names what a framework fuses:

- **chains**: consecutive element-wise or reduction kernels of one layer and pass over the same elements become
  one kernel. The intermediate tensors stay on chip: each is neither written by its producer nor read by its
  consumer, except the ones ``keep`` names, which training still writes because a backward kernel reads them.
  So an inference chain moves its first input and its last output (plus the side streams every member moves:
  a residual's second operand, dropout masks, LayerNorm statistics and parameters).
- **multi_tensor**: the optimizer's per-layer kernels of one name become one multi-tensor-apply launch set over
  all layers: launches of ``max_blocks`` chunks of ``chunk_elems`` elements, at most ``max_tensors`` tensors each
  (apex / ATen constants). The parameter count per layer is known, the tensors within a layer are not: each
  layer counts as one tensor.
- **gemm_groups**: GEMMs with a common input (Q/K/V, 002 Fig. 13) become one GEMM with concatenated weights,
  forward and both backward GEMMs (and their bias gradients, one reduction over the concatenated width).
- **attention**: a FlashAttention kernel (``attn.sdpa``) replaces score B-GEMM, scale, mask, softmax, dropout and
  context B-GEMM; its HBM traffic follows the IO analysis of FlashAttention's Algorithms 1 and 4, Θ(N²d²/M) for
  on-chip memory M; its backward recomputes the scores and probabilities (their forward FLOPs are added).
  ``--attention sdpa`` is this rule with the ``flash`` profile's on-chip sizes (``sdpa``): one model of the kernel.

FLOPs are unchanged by every rule except the fused attention's backward recomputation. Each fused op keeps the
labels of the ops it absorbed: a label the absorbed ops share keeps its value, differing values are joined by
``LABEL_JOIN`` in order of appearance, and two labels are added: ``fusion`` (the rule) and ``absorbed`` (the
names of the absorbed kernels). Group-by therefore still works, and a fused op whose members come from
different groups shows under their joined name.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tstack.errors import SpecError
from tstack.loader import load_spec, presets_in, show, unknown_fields
from tstack.spec import preset_dir
from tstack.workload import formulas as F
from tstack.workload.labels import FUSED_ATTENTION, FUSED_ATTENTION_GROUP, FUSED_ATTENTION_NLPFAST, LABEL_JOIN, SDPA
from tstack.workload.op import DTYPE_BYTES, Op, OpKind

Workload = tuple[Op, ...]
BACKWARD_PASSES = ("bwd-act", "bwd-weight")
FORWARD_PASSES = ("fwd", "recompute")
STAT_BYTES = 4  # FlashAttention keeps its row statistics (max and sum, or the log-sum-exp) in fp32


@dataclass(frozen=True, slots=True)
class Chain:
    """Kernel names fused when they run back to back; ``keep``: members whose output training still writes."""

    name: str
    ops: tuple[str, ...]
    keep: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MultiTensor:
    """Optimizer kernels fused across layers by multi-tensor apply; ``max_tensors``: tensors one launch takes,
    per kernel name (apex's depth_to_max_tensors for the kernel's number of tensor lists)."""

    ops: tuple[str, ...]
    chunk_elems: int
    max_blocks: int
    max_tensors: dict[str, int] = field(default_factory=dict)

    def launches(self, sizes: list[int], name: str = "") -> int:
        """Launches of one multi-tensor kernel over tensors of these sizes, as apex's multi_tensor_apply issues
        them: a launch when the blocks (chunks) are full, when the tensors are full at a tensor's last chunk, or at
        the last chunk of all; a tensor cut by a launch carries over to the next one."""
        max_tensors = self.max_tensors.get(name, 0)
        launches = tensors = blocks = 0
        for t, size in enumerate(sizes):
            tensors += 1
            chunks = max(1, math.ceil(size / self.chunk_elems))
            for c in range(chunks):
                blocks += 1
                last_of_tensor = c == chunks - 1
                if (blocks == self.max_blocks or (max_tensors and tensors == max_tensors and last_of_tensor)
                        or (t == len(sizes) - 1 and last_of_tensor)):
                    launches += 1
                    blocks = 0
                    tensors = 0 if last_of_tensor else 1
        return max(1, launches)


@dataclass(frozen=True, slots=True)
class Attention:
    """A fused (FlashAttention) kernel; ``onchip_bytes`` per device preset name, with a ``default``."""

    onchip_bytes: dict[str, int] = field(default_factory=dict)

    def onchip(self, device: str) -> int:
        return self.onchip_bytes.get(device, self.onchip_bytes["default"])


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    description: str = ""
    chains: tuple[Chain, ...] = ()
    multi_tensor: MultiTensor | None = None
    gemm_groups: tuple[tuple[str, ...], ...] = ()
    attention: Attention | None = None
    sources: tuple[str, ...] = ()


FIELDS = {"name", "description", "extends", "chains", "multi_tensor", "gemm_groups", "attention", "sources"}


def fusion_presets() -> list[str]:
    return presets_in(preset_dir("fusion"))


def _parse(data: dict, where: str, path: Path) -> Profile:
    problems = unknown_fields(data, FIELDS, lambda k: show(k, 40))
    if "extends" in data:
        parent = data["extends"]
        if parent not in fusion_presets() or parent == data.get("name"):
            problems.append(f"extends={show(parent, 40)} is not another fusion preset ({', '.join(fusion_presets())})")
        else:
            base = load_spec(parent, "fusion profile", preset_dir("fusion"), _parse, "")
            data = {**_unparse(base), **{k: v for k, v in data.items() if k != "extends"}}
    if problems:
        raise SpecError(problems, where)
    try:
        chains = tuple(Chain(c["name"], tuple(c["ops"]), tuple(c.get("keep", ()))) for c in data.get("chains") or ())
        mt = data.get("multi_tensor")
        multi = MultiTensor(tuple(mt["ops"]), int(mt["chunk_elems"]), int(mt["max_blocks"]),
                            {str(k): int(v) for k, v in (mt.get("max_tensors") or {}).items()}) if mt else None
        at = data.get("attention")
        attention = Attention({str(k): int(v) for k, v in at["onchip_bytes"].items()}) if at else None
        groups = tuple(tuple(g) for g in data.get("gemm_groups") or ())
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise SpecError([f"malformed fusion rules ({show(str(e), 80)})"], where) from None
    for c in chains:
        if len(c.ops) < 2 or not set(c.keep) <= set(c.ops[:-1]):
            problems.append(f"chain {show(c.name, 40)}: needs two or more ops and keep ⊆ all but the last op")
        problems += [f"chain {show(c.name, 40)}: op {show(o, 40)} is not a registered kernel"
                     for o in c.ops if o not in F.KERNELS]
    if multi and (multi.chunk_elems < 1 or multi.max_blocks < 1):
        problems.append("multi_tensor.chunk_elems and max_blocks must be >= 1")
    if attention and ("default" not in attention.onchip_bytes or min(attention.onchip_bytes.values()) < 1):
        problems.append("attention.onchip_bytes needs a 'default' and values >= 1")
    if problems:
        raise SpecError(problems, where)
    return Profile(str(data.get("name", path.stem)), str(data.get("description", "")), chains, multi, groups,
                   attention, tuple(data.get("sources") or ()))


def _unparse(p: Profile) -> dict[str, Any]:
    return {"chains": [{"name": c.name, "ops": list(c.ops), "keep": list(c.keep)} for c in p.chains],
            "multi_tensor": None if p.multi_tensor is None else {
                "ops": list(p.multi_tensor.ops), "chunk_elems": p.multi_tensor.chunk_elems,
                "max_blocks": p.multi_tensor.max_blocks, "max_tensors": dict(p.multi_tensor.max_tensors)},
            "gemm_groups": [list(g) for g in p.gemm_groups],
            "attention": None if p.attention is None else {"onchip_bytes": dict(p.attention.onchip_bytes)},
            "sources": list(p.sources)}


def load_profile(name_or_path: str | Path | Profile) -> Profile:
    """A fusion profile by preset name (none, apex, inductor, flash) or from a .yaml file."""
    if isinstance(name_or_path, Profile):
        return name_or_path
    return load_spec(name_or_path, "fusion profile", preset_dir("fusion"), _parse, "or a fusion .yaml file")


# --- labels ---------------------------------------------------------------------------------------------------

def merged_labels(ops: list[Op], rule: str) -> tuple[tuple[str, str], ...]:
    """Each label key of the absorbed ops with its distinct values joined, then ``fusion`` and ``absorbed``."""
    keys: dict[str, list[str]] = {}
    for op in ops:
        for k, v in op.labels:
            values = keys.setdefault(k, [])
            if v not in values:
                values.append(v)
    names = list(dict.fromkeys(op.name for op in ops))
    return (*((k, LABEL_JOIN.join(v)) for k, v in keys.items()), ("fusion", rule), ("absorbed", "+".join(names)))


def is_training(ops: Workload) -> bool:
    return any(op.label("pass") in BACKWARD_PASSES for op in ops)


def _elems(op: Op) -> int:
    return op.dim("rows") * op.dim("cols")


# --- element-wise chains --------------------------------------------------------------------------------------

def chain_bytes(ops: list[Op], chain: Chain, training: bool) -> int:
    """Σ bytes − for each intermediate (output of member i, input of member i+1): its read, and its write unless
    training keeps it. Intermediates have the element count and the dtype of their producer."""
    saved = 0
    for op, name in zip(ops[:-1], chain.ops[:-1]):
        tensor = _elems(op) * DTYPE_BYTES[op.dtype]
        saved += tensor if training and name in chain.keep else 2 * tensor
    return sum(op.bytes for op in ops) - saved


def _chain_at(ops: Workload, i: int, chain: Chain) -> list[Op] | None:
    n = len(chain.ops)
    window = list(ops[i:i + n])
    if len(window) < n or tuple(op.name for op in window) != chain.ops:
        return None
    first = window[0]
    same = all(op.label("layer") == first.label("layer") and op.label("part") == first.label("part")
               and op.count == first.count and _elems(op) == _elems(first) and op.dtype == first.dtype
               and (op.label("pass") in FORWARD_PASSES) == (first.label("pass") in FORWARD_PASSES) for op in window)
    return window if same and _elems(first) else None


def fuse_chains(ops: Workload, chains: tuple[Chain, ...], training: bool) -> Workload:
    out: list[Op] = []
    i = 0
    while i < len(ops):
        for chain in chains:
            window = _chain_at(ops, i, chain)
            if window is not None:
                first = window[0]
                kind = OpKind.REDUCTION if any(op.kind == OpKind.REDUCTION for op in window) else OpKind.ELEMENTWISE
                out.append(replace(first, kind=kind, name=f"fused.{chain.name}", flops=sum(op.flops for op in window),
                                   bytes=chain_bytes(window, chain, training), labels=merged_labels(window, chain.name)))
                i += len(window)
                break
        else:
            out.append(ops[i])
            i += 1
    return tuple(out)


# --- optimizer across layers ----------------------------------------------------------------------------------

def split_total(total: int, parts: int) -> tuple[int, int]:
    """(per launch, last launch) so that (parts − 1)·per + last == total exactly."""
    per = total // parts
    return per, total - per * (parts - 1)


def fuse_optimizer(ops: Workload, multi: MultiTensor) -> Workload:
    """Every optimizer kernel named in ``multi.ops`` becomes one multi-tensor kernel at its first position."""
    members: dict[str, list[Op]] = {}
    for op in ops:
        if op.label("part") == "optimizer" and op.name in multi.ops:
            members.setdefault(op.name, []).append(op)
    out: list[Op] = []
    for op in ops:
        group = members.get(op.name) if op.label("part") == "optimizer" else None
        if group is None:
            out.append(op)
            continue
        if op is not group[0]:
            continue
        params = [m.dim("params") for m in group for _ in range(m.count)]
        launches = multi.launches(params, op.name)
        flops = sum(m.flops * m.count for m in group)
        traffic = sum(m.bytes * m.count for m in group)
        (f, f_last), (b, b_last) = split_total(flops, launches), split_total(traffic, launches)
        labels = merged_labels(group, f"multi-tensor {op.name}")
        dims = (("params", sum(params)), ("launches", launches))
        fused = replace(op, name=f"fused.{op.name}", dims=dims, labels=labels, count=1, flops=f_last, bytes=b_last)
        if launches > 1:
            out.append(replace(fused, count=launches - 1, flops=f, bytes=b))
        out.append(fused)
    return tuple(out)


# --- GEMMs with a common input --------------------------------------------------------------------------------

def fuse_gemm_groups(ops: Workload, groups: tuple[tuple[str, ...], ...]) -> Workload:
    """Per layer, pass and group: the GEMMs become one with concatenated weights; their bias gradients one
    reduction. The fused op sits where the group's first GEMM was."""
    name_group = {name: gi for gi, g in enumerate(groups) for name in g}
    buckets: dict[tuple, list[int]] = {}
    bias_of: dict[int, int] = {}
    for i, op in enumerate(ops):
        gi = name_group.get(op.name)
        if gi is not None and op.kind == OpKind.GEMM:
            buckets.setdefault((gi, op.label("layer"), op.label("pass"), op.count), []).append(i)
            if i + 1 < len(ops) and ops[i + 1].name == "bias-grad" and ops[i + 1].label("layer") == op.label("layer"):
                bias_of[i] = i + 1
    replaced: dict[int, Op | None] = {}
    for (_group, _layer, pass_, _count), idx in buckets.items():
        members = [ops[i] for i in idx]
        if len(members) < 2:
            continue
        fused = _fused_gemm(members, pass_)
        if fused is None:
            continue
        replaced[idx[0]] = fused
        replaced.update({i: None for i in idx[1:]})
        biases = [bias_of[i] for i in idx if i in bias_of]
        if len(biases) == len(idx):
            bias = [ops[i] for i in biases]
            rows, cols = bias[0].dim("rows"), sum(b.dim("cols") for b in bias)
            merged = replace(bias[0], name="fused.bias-grad", dims=(("rows", rows), ("cols", cols)),
                             flops=sum(b.flops for b in bias), bytes=sum(b.bytes for b in bias),
                             labels=merged_labels(bias, "gemm-group"))
            replaced[biases[0]] = merged
            replaced.update({i: None for i in biases[1:]})
    return tuple(replaced.get(i, op) for i, op in enumerate(ops) if replaced.get(i, op) is not None)


def _fused_gemm(members: list[Op], pass_: str) -> Op | None:
    """One GEMM for a group, or None when the members do not share the common operand's shape."""
    first = members[0]
    ib = DTYPE_BYTES[first.dtype]
    shapes = [m.gemm_shape for m in members]
    if pass_ in FORWARD_PASSES:  # M×N×K: outputs stack along M; the input (K×N) is common
        if len({(n, k) for _, n, k, _ in shapes}) != 1:
            return None
        mnk = (sum(s[0] for s in shapes), shapes[0][1], shapes[0][2])
    elif pass_ == "bwd-act":  # K_in×T×M_out: reductions stack along K; the output dX (M×N) is common
        if len({(m, n) for m, n, _, _ in shapes}) != 1:
            return None
        mnk = (shapes[0][0], shapes[0][1], sum(s[2] for s in shapes))
    else:  # bwd-weight K_in×M_out×T: outputs stack along N; the input X is common
        if len({(m, k) for m, _, k, _ in shapes}) != 1:
            return None
        mnk = (shapes[0][0], sum(s[1] for s in shapes), shapes[0][2])
    out_bytes = _gemm_out_bytes(first, ib)
    counts = F.gemm(*mnk, 1, ib, out_bytes)
    return replace(first, name=f"fused.{'+'.join(m.name for m in members)}", dims=counts.dims, flops=counts.flops,
                   bytes=counts.bytes, labels=merged_labels(members, "gemm-group"))


def _gemm_out_bytes(op: Op, in_bytes: int) -> int:
    """The output width the builder used: bytes = (M·K + K·N)·in + M·N·out, solved for out."""
    M, N, K, batch = op.gemm_shape
    return (op.bytes // batch - (M * K + K * N) * in_bytes) // (M * N)


# --- fused attention (FlashAttention) -------------------------------------------------------------------------

def flash_forward_elems(n_q: int, n_kv: int, d: int, m_elems: int) -> tuple[int, int]:
    """(matrix elements, statistics elements) one head's forward moves to and from HBM (FlashAttention Alg. 1).

    Bc = ⌈M/4d⌉ keys per block, Tc = ⌈N_kv/Bc⌉ blocks. Step 2 writes O, ℓ, m once (N_q·d + 2·N_q); the outer loop
    reads every K_j, V_j once (2·N_kv·d); for each of the Tc outer steps the inner loop reads Q_i, O_i, ℓ_i, m_i
    and writes O_i, ℓ_i, m_i: 3·N_q·d matrix and 4·N_q statistics elements.
    """
    tc = math.ceil(n_kv / math.ceil(m_elems / (4 * d)))
    return n_q * d + 2 * n_kv * d + tc * 3 * n_q * d, 2 * n_q + tc * 4 * n_q


def flash_backward_elems(n_q: int, n_kv: int, d: int, m_elems: int) -> tuple[int, int]:
    """(matrix elements, statistics elements) one head's backward moves (FlashAttention Alg. 4).

    Step 5 writes dQ, dK, dV zeros (N_q·d + 2·N_kv·d); the outer loop reads K_j, V_j and writes dK_j, dV_j once
    (4·N_kv·d); for each of the Tc outer steps the inner loop reads Q_i, O_i, dO_i, dQ_i, ℓ_i, m_i and writes
    dQ_i: 5·N_q·d matrix and 2·N_q statistics elements.
    """
    tc = math.ceil(n_kv / math.ceil(m_elems / (4 * d)))
    return n_q * d + 6 * n_kv * d + tc * 5 * n_q * d, tc * 2 * n_q


ATTN_POINTWISE = ("scale", "mask", "softmax", "dropout")
ATTN_POINTWISE_BWD = ("dropout-bwd", "softmax-bwd", "scale")


def _attention_members(ops: Workload, i: int) -> list[Op] | None:
    """The forward (score, point-wise, context) or backward run of one attention block starting at ``i``."""
    first = ops[i]
    if first.kind != OpKind.BGEMM or not first.name.endswith(".score" if first.label("pass") in FORWARD_PASSES
                                                            else ".context"):
        return None
    prefix = first.name.rsplit(".", 1)[0]
    j = i + 1
    if first.label("pass") in FORWARD_PASSES:
        while j < len(ops) and ops[j].name in ATTN_POINTWISE:
            j += 1
        end = (ops[j].name == f"{prefix}.context") if j < len(ops) else False
        return list(ops[i:j + 1]) if end else None
    # backward: context bwd-act, context bwd-weight, point-wise backward, score bwd-act, score bwd-weight
    if j >= len(ops) or ops[j].name != first.name:
        return None
    j += 1
    while j < len(ops) and ops[j].name in ATTN_POINTWISE_BWD and ops[j].label("pass") != "fwd":
        j += 1
    score = f"{prefix}.score"
    if j + 1 < len(ops) and ops[j].name == score and ops[j + 1].name == score:
        return list(ops[i:j + 2])
    return None


def fuse_attention(ops: Workload, attention: Attention, device: str) -> Workload:
    """Forward and backward attention runs become one kernel each; the forward FLOPs a backward recomputes
    (score B-GEMM, scale, mask, softmax, dropout) are those of the same layer's forward run."""
    m_bytes = attention.onchip(device)
    forward_flops: dict[tuple[str, str], int] = {}
    out: list[Op] = []
    i = 0
    while i < len(ops):
        members = _attention_members(ops, i)
        if members is None:
            out.append(ops[i])
            i += 1
            continue
        first = members[0]
        forward = first.label("pass") in FORWARD_PASSES
        n_kv, n_q, d = _score_forward_dims(members, forward)
        batch = first.dim("batch")
        width = DTYPE_BYTES[first.dtype]
        mat, stats = (flash_forward_elems if forward else flash_backward_elems)(n_q, n_kv, d, max(1, m_bytes // width))
        key = (first.label("layer"), first.name.rsplit(".", 1)[0])
        flops = sum(op.flops for op in members)
        if forward:
            forward_flops[key] = sum(op.flops for op in members if op.name != f"{key[1]}.context")
        elif key in forward_flops:
            flops += forward_flops[key]
        else:
            raise ValueError(f"fused attention: the backward of {key[1]} in layer {key[0]} has no forward run before it")
        # One kernel each way, as PyTorch attributes it: the forward's joined group and nlpfast in both passes, and
        # one bwd-act kernel for the backward (its gradients are all of activations).
        labels = dict(merged_labels(members, FUSED_ATTENTION))
        labels.update(group=FUSED_ATTENTION_GROUP, nlpfast=FUSED_ATTENTION_NLPFAST,
                      **({} if forward else {"pass": "bwd-act"}))
        out.append(replace(first, kind=OpKind.BGEMM, name=f"{key[1]}.{SDPA}",
                           dims=(("M", n_kv), ("N", n_q), ("K", d), ("batch", batch)), flops=flops,
                           bytes=batch * (mat * width + stats * STAT_BYTES), labels=tuple(labels.items())))
        i += len(members)
    return tuple(out)


def sdpa(ops: Workload, device: str = "") -> Workload:
    """The attention cores of ``ops`` as fused kernels (``--attention sdpa``): the attention rule of the ``flash``
    profile, with its on-chip memory for ``device`` (a preset name; others get its default)."""
    return fuse_attention(ops, _flash_attention(), device)


@functools.lru_cache(maxsize=1)
def _flash_attention() -> Attention:
    """The ``flash`` preset's attention rule, parsed once (the preset files do not change while a process runs)."""
    rule = load_profile("flash").attention
    assert rule is not None, "the flash fusion preset defines the attention rule"
    return rule


def _score_forward_dims(members: list[Op], forward: bool) -> tuple[int, int, int]:
    """(keys, queries per sequence and KV head, head width) of the forward score B-GEMM (M×N×K); in a backward
    run the score's bwd-weight GEMM is K×N×M of it (002 Table 2b)."""
    if forward:
        return members[0].dim("M"), members[0].dim("N"), members[0].dim("K")
    weight = members[-1]
    return weight.dim("K"), weight.dim("N"), weight.dim("M")


def fuse(ops: Workload, profile: str | Path | Profile, device: str = "") -> Workload:
    """The workload with a fusion profile's rules applied: attention first (it absorbs the point-wise ops of
    attention), then GEMM groups, element-wise chains, and the optimizer across layers. ``device`` (a preset
    name) picks the on-chip memory size of a fused attention kernel."""
    p = load_profile(profile)
    ops = tuple(ops)
    training = is_training(ops)
    if p.attention is not None:
        ops = fuse_attention(ops, p.attention, device)
    if p.gemm_groups:
        ops = fuse_gemm_groups(ops, p.gemm_groups)
    if p.chains:
        ops = fuse_chains(ops, p.chains, training)
    if p.multi_tensor is not None:
        ops = fuse_optimizer(ops, p.multi_tensor)
    return ops

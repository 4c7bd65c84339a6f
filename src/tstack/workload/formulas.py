"""FLOP and byte formulas, registered once per kernel name (see op.py for the FLOP convention).

GEMMs use the M×N×K convention of Demystifying BERT (002) Table 2b: M is the output
feature dimension, N the token dimension, K the reduction, so a Linear forward on T tokens
from width I to width O is O×T×I.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tstack.errors import UnknownNameError
from tstack.workload.op import OpKind


@dataclass(frozen=True, slots=True)
class Formula:
    """Per-element cost of an element-wise or row-reduction kernel on a rows×cols tensor."""

    kind: str  # "elementwise" or "reduction"
    flops: int  # FLOPs per element
    reads: int  # full-size tensors read at the activation dtype
    writes: int  # full-size tensors written at the activation dtype
    mask_bytes: int = 0  # uint8 dropout-mask bytes per element, read or written
    row_stats: int = 0  # fp32 statistics per row (LayerNorm mean and rstd) read or written
    vec_reads: int = 0  # per-column parameter vectors read (bias, gamma, beta)
    vec_writes: int = 0  # per-column fp32 gradient vectors written (bias, gamma, beta grads)


KERNELS: dict[str, Formula] = {}
BACKWARD: dict[str, tuple[str, ...]] = {}


def register(name: str, kernel: Formula, backward: tuple[str, ...] = ()) -> None:
    """Register a kernel and the kernels its backward launches; a duplicate name raises."""
    if name in KERNELS:
        raise ValueError(f"kernel {name!r} is registered twice")
    KERNELS[name] = kernel
    BACKWARD[name] = backward


def kernel(name: str) -> Formula:
    try:
        return KERNELS[name]
    except KeyError:
        raise UnknownNameError(f"kernel {name!r} is not registered (known: {', '.join(sorted(KERNELS))})") from None


EW, RED = OpKind.ELEMENTWISE, OpKind.REDUCTION
# Derivations of FLOPs per element, one line each:
register("scale", Formula(EW, 1, 1, 1), ("scale",))  # x·c
register("mask", Formula(EW, 1, 1, 1))  # x + mask (broadcast [B,1,1,S] mask read is 1/(h·S) of x: ignored); grad passes through
register("dropout", Formula(EW, 3, 1, 1, mask_bytes=1), ("dropout-bwd",))  # rng draw, compare, scale-multiply
register("dropout-bwd", Formula(EW, 2, 1, 1, mask_bytes=1))  # dy·mask·scale
register("softmax", Formula(RED, 5, 1, 1), ("softmax-bwd",))  # max, subtract, exp, sum, divide
register("softmax-bwd", Formula(RED, 4, 2, 1))  # y·(dy − Σ dy·y): multiply, sum, subtract, multiply
register("bias-gelu", Formula(EW, 6, 1, 1, vec_reads=1), ("gelu-bwd", "bias-grad"))  # +b, x/√2, erf, +1, ·x, ·0.5
register("gelu-bwd", Formula(EW, 11, 2, 1))  # Φ(x) (4) + x·φ(x) (x², ·−½, exp, ·c, ·x: 5) + add, ·dy
# bias-gelu-tanh: +b, x³ (2), ·c, +x, ·k, tanh, +1, ·x, ·½
register("bias-gelu-tanh", Formula(EW, 10, 1, 1, vec_reads=1), ("gelu-tanh-bwd", "bias-grad"))
register("gelu-tanh-bwd", Formula(EW, 14, 2, 1))  # tanh recomputed (8), sech² (2), chain products (3), ·dy
register("bias-relu", Formula(EW, 2, 1, 1, vec_reads=1), ("relu-bwd", "bias-grad"))  # +b, max(0,·)
register("relu-bwd", Formula(EW, 2, 2, 1))  # compare, select
register("bias-silu", Formula(EW, 6, 1, 1, vec_reads=1), ("silu-bwd", "bias-grad"))  # +b, neg, exp, +1, divide, ·x
register("silu-bwd", Formula(EW, 8, 2, 1))  # σ recomputed (4), σ·(1 + x·(1−σ)) (3), ·dy
register("silu-mul", Formula(EW, 6, 2, 1), ("silu-mul-bwd",))  # gated FFN: g·σ(g)·u: neg, exp, +1, div, ·g... ·u
register("silu-mul-bwd", Formula(EW, 12, 3, 2))  # σ recomputed (4), dσ (3), du and dg products (5)
register("relu-mul", Formula(EW, 2, 2, 1), ("relu-mul-bwd",))  # gated ReLU: max, ·u
register("relu-mul-bwd", Formula(EW, 4, 3, 2))  # compare, select, two products
register("gelu-mul", Formula(EW, 6, 2, 1), ("gelu-mul-bwd",))  # gated GELU: gelu (5), ·u
register("gelu-mul-bwd", Formula(EW, 13, 3, 2))  # gelu' (11), two products
register("residual", Formula(EW, 1, 2, 1), ("grad-accumulate",))  # x + sublayer(x)
register("grad-accumulate", Formula(EW, 1, 2, 1))  # the residual's two gradient streams summed
register("bias-grad", Formula(RED, 1, 1, 0, vec_writes=1))  # column sum of dy
register("layernorm", Formula(RED, 7, 1, 1, row_stats=2, vec_reads=2), ("layernorm-bwd",))  # Σx, −μ, ², Σ, ·rstd, ·γ, +β
# layernorm-bwd: x̂ (2), γ·dy, 2 row sums (3), combine (3), ·rstd, dγ (2), dβ
register("layernorm-bwd", Formula(RED, 13, 2, 1, row_stats=2, vec_reads=1, vec_writes=2))
register("rmsnorm", Formula(RED, 4, 1, 1, row_stats=1, vec_reads=1), ("rmsnorm-bwd",))  # ², Σ, ·rstd, ·γ
register("rmsnorm-bwd", Formula(RED, 9, 2, 1, row_stats=1, vec_reads=1, vec_writes=1))  # x̂ (1), γ·dy, Σ (2), combine (3), dγ (2)
register("rope", Formula(EW, 3, 1, 1), ("rope",))  # x·cos + rot(x)·sin; backward is the inverse rotation
register("embedding-sum", Formula(EW, 2, 3, 1), ("embedding-sum",))  # word + position + type; backward fans the gradient out
register("position-add", Formula(EW, 1, 2, 1))  # x + sinusoidal table row


@dataclass(frozen=True, slots=True)
class Counts:
    """FLOPs, bytes and dims of one kernel instance."""

    flops: int
    bytes: int
    dims: tuple[tuple[str, int], ...]


def gemm(M: int, N: int, K: int, batch: int, in_bytes: int, out_bytes: int) -> Counts:
    """batch × (M×N×K): 2·M·N·K FLOPs each; reads A (M×K) and B (K×N), writes C (M×N)."""
    flops = 2 * M * N * K * batch
    traffic = batch * ((M * K + K * N) * in_bytes + M * N * out_bytes)
    return Counts(flops, traffic, (("M", M), ("N", N), ("K", K), ("batch", batch)))


def pointwise(name: str, rows: int, cols: int, act_bytes: int, param_bytes: int = 4) -> Counts:
    """A registered element-wise or reduction kernel over a rows×cols activation tensor."""
    k = kernel(name)
    elems = rows * cols
    traffic = (
        elems * (k.reads + k.writes) * act_bytes
        + elems * k.mask_bytes
        + rows * k.row_stats * 4
        + cols * (k.vec_reads + k.vec_writes) * param_bytes
    )
    return Counts(k.flops * elems, traffic, (("rows", rows), ("cols", cols)))


def gather(rows: int, cols: int, act_bytes: int) -> Counts:
    """Embedding lookup: reads rows table rows and writes them (plus int64 indices)."""
    return Counts(0, rows * cols * act_bytes * 2 + rows * 8, (("rows", rows), ("cols", cols)))


def linear_backward(M: int, N: int, K: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """002 Table 2b for Linear/FC: fwd O×T×I gives grad-act I×T×O and grad-weight I×O×T."""
    return (K, N, M), (K, M, N)


def bgemm_backward(M: int, N: int, K: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """002 Table 2b for attention B-GEMMs: fwd M×N×K gives grad-act M×K×N and grad-weight K×N×M."""
    return (M, K, N), (K, N, M)


GEMM_BACKWARD: dict[str, Callable[[int, int, int], tuple[tuple[int, int, int], tuple[int, int, int]]]] = {
    OpKind.GEMM: linear_backward,
    OpKind.BGEMM: bgemm_backward,
}


@dataclass(frozen=True, slots=True)
class OptimizerCost:
    """Per-parameter FLOPs and fp32 tensors read and written by one optimizer stage."""

    flops: int
    reads: int
    writes: int


# Fused optimizer stages (apex FusedLAMB / FusedAdam, as profiled in 002 Fig. 7), per parameter.
OPTIMIZER_STAGES: dict[str, tuple[tuple[str, OptimizerCost], ...]] = {
    # stage 1 reads w, g, m, v (4× the model, 002 Takeaway 7) and writes m, v and the update u:
    # g/‖g‖ (1), m (3), v (4), bias corrections (2), u = m̂/(√v̂+ε) + λw (5) = 15 FLOPs;
    # stage 2 reads w, u and the per-tensor trust ratio, writes w: ratio·lr (1), ·u (1), w − (1).
    "lamb": (("lamb-stage1", OptimizerCost(15, 4, 3)), ("lamb-stage2", OptimizerCost(3, 2, 1))),
    # Adam: m (3), v (4), corrections (2), w −= lr·m̂/(√v̂+ε) + decay (5) = 14; reads w, g, m, v; writes w, m, v.
    "adam": (("adam", OptimizerCost(14, 4, 3)),),
    # SGD with momentum: buf = μ·buf + g (2), w −= lr·buf (2); reads w, g, buf; writes w, buf.
    "sgd": (("sgd", OptimizerCost(4, 3, 2)),),
}

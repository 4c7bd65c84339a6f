"""Emitters: each returns the forward Op of one kernel and the backward Ops it implies."""

from __future__ import annotations

from dataclasses import dataclass, replace

from tstack.spec import ModelSpec, RunSpec
from tstack.workload import formulas as F
from tstack.workload.op import DTYPE_BYTES, Op, OpKind

# Activation storage dtype per precision; int8 inference keeps GEMM operands in int8 and
# the non-GEMM kernels in fp32 (dequantize → op → requantize, as in I-BERT's baseline).
ACT_DTYPE = {"fp32": "fp32", "tf32": "fp32", "fp16-mixed": "fp16", "bf16-mixed": "bf16", "int8": "fp32"}
GEMM_DTYPE = {"fp32": "fp32", "tf32": "tf32", "fp16-mixed": "fp16", "bf16-mixed": "bf16", "int8": "int8"}


@dataclass(frozen=True, slots=True)
class Step:
    """A forward Op with the backward Ops it launches in training (already in backward order)."""

    fwd: Op
    bwd: tuple[Op, ...] = ()


@dataclass(frozen=True, slots=True)
class Ctx:
    """What every emitter needs: the specs, dtypes and whether backward ops are wanted."""

    model: ModelSpec
    run: RunSpec
    act: str
    gemm_dtype: str
    count: int = 1

    @classmethod
    def of(cls, model: ModelSpec, run: RunSpec) -> Ctx:
        return cls(model, run, ACT_DTYPE[run.precision], GEMM_DTYPE[run.precision])

    @property
    def launch(self) -> bool:
        """Each kernel pays a host launch (eager execution; CUDA graphs replay them)."""
        return self.run.execution == "eager"

    @property
    def dropout(self) -> bool:
        """Dropout after sublayers and embeddings: training, asked for, and the model has it."""
        return self.run.training and self.run.dropout and self.model.dropout == "all"

    @property
    def attn_dropout(self) -> bool:
        """Dropout on the attention probabilities."""
        return self.run.training and self.run.dropout and self.model.dropout in ("all", "attention")

    @property
    def act_bytes(self) -> int:
        return DTYPE_BYTES[self.act]

    @property
    def param_bytes(self) -> int:
        """Bytes of the weights the kernels read (the fp16/bf16 model copy under mixed precision)."""
        return DTYPE_BYTES[self.gemm_dtype]

    @property
    def gemm_out_bytes(self) -> int:
        """int8 GEMMs write int8 after a fused requantization; others write their own dtype."""
        return DTYPE_BYTES[self.gemm_dtype]

    def at_count(self, factor: int) -> Ctx:
        """The same context for ``factor`` identical instances per current instance."""
        return replace(self, count=self.count * factor)


def _op(ctx: Ctx, kind: str, name: str, counts: F.Counts, dtype: str, labels: dict[str, str]) -> Op:
    return Op(kind=kind, name=name, dims=counts.dims, dtype=dtype, flops=counts.flops, bytes=counts.bytes,
              labels=tuple(labels.items()), count=ctx.count, launch=ctx.launch)


def _bwd_labels(labels: dict[str, str], pass_: str) -> dict[str, str]:
    return {**labels, "pass": pass_}


def linear(ctx: Ctx, name: str, mnk: tuple[int, int, int], labels: dict[str, str], bias: bool = False) -> Step:
    """A Linear layer's GEMM (kind gemm) with its 002 Table 2b backward; ``bias`` adds the bias-gradient reduction."""
    return _gemm(ctx, OpKind.GEMM, name, mnk, 1, labels, bias)


def bgemm(ctx: Ctx, name: str, mnk: tuple[int, int, int], batch: int, labels: dict[str, str]) -> Step:
    """``batch`` independent GEMMs of one shape (kind bgemm, attention's backward rule); ``batch`` >= 1 (B·h may be 1)."""
    if batch < 1:
        raise ValueError(f"bgemm {name!r}: batch must be >= 1, got {batch}")
    return _gemm(ctx, OpKind.BGEMM, name, mnk, batch, labels, False)


def _gemm(ctx: Ctx, kind: OpKind, name: str, mnk: tuple[int, int, int], batch: int, labels: dict[str, str],
          bias: bool) -> Step:
    M, N, K = mnk
    ib, ob = DTYPE_BYTES[ctx.gemm_dtype], ctx.gemm_out_bytes
    fwd = _op(ctx, kind, name, F.gemm(M, N, K, batch, ib, ob), ctx.gemm_dtype, labels)
    if not ctx.run.training:
        return Step(fwd)
    act_mnk, weight_mnk = F.GEMM_BACKWARD[kind](M, N, K)
    bwd = [
        _op(ctx, kind, name, F.gemm(*act_mnk, batch, ib, ob), ctx.gemm_dtype, _bwd_labels(labels, "bwd-act")),
        _op(ctx, kind, name, F.gemm(*weight_mnk, batch, ib, ob), ctx.gemm_dtype, _bwd_labels(labels, "bwd-weight")),
    ]
    if bias:
        bias_grad = F.pointwise("bias-grad", N, M, ctx.act_bytes, 4)
        bwd.append(_op(ctx, OpKind.REDUCTION, "bias-grad", bias_grad, ctx.act, _bwd_labels(labels, "bwd-weight")))
    return Step(fwd, tuple(bwd))


def pointwise(ctx: Ctx, name: str, rows: int, cols: int, labels: dict[str, str]) -> Step:
    """A registered element-wise or reduction kernel and the backward kernels registered for it."""
    pb = ctx.param_bytes
    k = F.kernel(name)
    fwd = _op(ctx, k.kind, name, F.pointwise(name, rows, cols, ctx.act_bytes, pb), ctx.act, labels)
    if not ctx.run.training:
        return Step(fwd)
    bwd = []
    for b in F.BACKWARD[name]:
        pass_ = "bwd-weight" if b == "bias-grad" else "bwd-act"
        counts = F.pointwise(b, rows, cols, ctx.act_bytes, 4 if b == "bias-grad" else pb)
        bwd.append(_op(ctx, F.kernel(b).kind, b, counts, ctx.act, _bwd_labels(labels, pass_)))
    return Step(fwd, tuple(bwd))


def copy(ctx: Ctx, name: str, rows: int, cols: int, repeat: int, labels: dict[str, str]) -> Step:
    """A framework copy of activations (eager execution): reads rows×cols elements and writes them ``repeat`` times
    (kv-cache-cat: torch.cat of the cache and the new K or V, repeat 1; repeat-kv: K or V once per query head)."""
    counts = F.Counts(0, rows * cols * (1 + repeat) * ctx.act_bytes, (("rows", rows), ("cols", cols), ("repeat", repeat)))
    return Step(_op(ctx, OpKind.COPY, name, counts, ctx.act, labels))


def embedding_lookup(ctx: Ctx, name: str, tokens: int, table_rows: int, labels: dict[str, str], width: int = 0) -> Step:
    """Gather `tokens` rows of an embedding table (``width`` wide, hidden by default); backward zero-fills and
    scatter-adds the table gradient."""
    H = width or ctx.model.hidden
    lookup = F.gather(tokens, H, ctx.act_bytes)
    fwd = _op(ctx, OpKind.GATHER, name, F.Counts(lookup.flops, lookup.bytes, lookup.dims + (("table", table_rows),)),
              ctx.act, labels)
    if not ctx.run.training:
        return Step(fwd)
    pb = ctx.param_bytes
    # embedding_dense_backward: zero the table gradient, then read dy and add into T rows.
    counts = F.Counts(tokens * H, table_rows * H * pb + tokens * H * (ctx.act_bytes + 2 * pb) + tokens * 8,
                      (("rows", tokens), ("cols", H), ("table", table_rows)))
    return Step(fwd, (_op(ctx, OpKind.GATHER, name, counts, ctx.act, _bwd_labels(labels, "bwd-weight")),))


def with_pass(op: Op, pass_: str) -> Op:
    """The same kernel relabelled to another pass (recomputation under checkpointing)."""
    return op.relabel(**{"pass": pass_})

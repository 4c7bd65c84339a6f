"""One PyTorch implementation per Op kind / registered kernel, at the Op's shapes and dtype.

``prepare(op, cfg)`` allocates every buffer once (calibrated inputs from ``values``, outputs,
scratch) and returns a ``PreparedOp`` whose ``run()`` launches the kernel on those buffers with
``out=`` variants or in place, so a timed loop of ``run()`` does no allocation (see
``runtime`` for why). ``reference(op, inputs)`` computes the same outputs with explicit
formulas in float64, for the tests.

Shapes (002 Table 2b convention, see ``workload.formulas``):

- ``gemm``: C (M×N) = A (M×K) · B (K×N), ``torch.mm(out=)``; ``bgemm`` the same per batch entry,
  ``torch.bmm(out=)``. The Op's name (which Linear, which B-GEMM) does not change the kernel.
  int8: ``torch._int_mm`` (int8 × int8 → int32; the requantization the cost model assumes to be
  fused is not run); an int8 ``bgemm`` launches one ``_int_mm`` per batch entry, as PyTorch has
  no batched int8 GEMM. On CUDA ``_int_mm`` needs M > 16 and K, N multiples of 8: other shapes
  raise TstackError.
- element-wise and reduction kernels (``formulas.KERNELS``): a rows×cols tensor at the Op's
  dtype; per-column vectors (bias, γ, β) of cols; LayerNorm statistics as PyTorch keeps them.
  Kernels that the cost model counts as one fused kernel but that eager PyTorch has no single
  kernel for run as the fewest in-place launches: bias+activation is an add into the output
  then the activation in place; gated activations are the activation then a multiply in place;
  RMSNorm is a row norm, a few row-sized ops and two multiplies; rotary embedding is a multiply
  and two ``addcmul`` on the halves (rotate-half over the whole row, angles per column).
- ``gather``: an embedding lookup (0 FLOPs) is ``index_select(out=)`` from a table of ``table``
  rows (the forward Op does not record its table size today: the table then has ``rows`` rows,
  which reads the same bytes); its backward (FLOPs > 0, dims with ``table``) zero-fills the table
  gradient and ``index_add_``s the rows into it.
- optimizer stages on flat fp32 tensors of ``params`` elements: LAMB stage 1 and 2 and the
  norms with torch ops (no fused LAMB in PyTorch), Adam as ``torch._fused_adamw_``, SGD with
  momentum as ``torch._fused_sgd_`` (fixed step 1, learning rate 1e-4).
- copies: ``grad-to-master`` unscales a half-precision gradient into fp32 (one ``mul(out=)``),
  ``master-to-model`` casts fp32 weights to half (``copy_``). The Op records only fp32, so the
  half type is fp16 (bf16 would move the same bytes).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tstack.errors import TstackError
from tstack.profiler.runtime import RuntimeConfig, _torch
from tstack.profiler.values import Draw, Values
from tstack.workload.op import Op

SCALE = 0.125  # attention scale 1/√d_h for d_h = 64
DROPOUT_P = 0.1
EPS = 1e-5
LR = 1e-4
BETA1, BETA2, ADAM_EPS, WEIGHT_DECAY = 0.9, 0.999, 1e-6, 0.01
MOMENTUM = 0.9
INV_LOSS_SCALE = 2.0 ** -10


@dataclass(frozen=True)
class PreparedOp:
    """An Op ready to launch: ``run()`` is one launch of its kernel(s) on preallocated buffers.

    ``inputs`` and ``outputs`` name the buffers (in-place kernels list a tensor in both);
    ``output()`` is the main tensor the kernel writes.
    """

    op: Op
    run: Callable[[], Any]
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    primary: str
    scratch: dict[str, Any] = field(default_factory=dict)

    def output(self):
        return self.outputs[self.primary]


@dataclass
class _Ctx:
    op: Op
    torch: Any
    device: Any
    dtype: Any
    draw: Draw

    @property
    def rows(self) -> int:
        return self.op.dim("rows")

    @property
    def cols(self) -> int:
        return self.op.dim("cols")

    def empty(self, shape, dtype=None):
        return self.torch.empty(shape, dtype=dtype or self.dtype, device=self.device)


Builder = Callable[[_Ctx], PreparedOp]
Reference = Callable[[Op, Mapping[str, Any]], dict[str, Any]]
BUILDERS: dict[str, Builder] = {}
REFERENCES: dict[str, Reference] = {}
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "int8": "int8"}


def implements(*names: str, ref: Reference | None = None) -> Callable[[Builder], Builder]:
    def deco(fn: Builder) -> Builder:
        for n in names:
            BUILDERS[n] = fn
            if ref is not None:
                REFERENCES[n] = ref
        return fn

    return deco


def implementation_key(op: Op) -> str:
    """The key of the implementation that runs an Op: its kind for GEMMs and gathers, else its name."""
    if op.kind in ("gemm", "bgemm"):
        return op.kind
    if op.kind == "gather":  # a lookup is 0 FLOPs (op.py); its backward adds each row into the table gradient
        return "gather-bwd" if op.flops else "gather"
    return op.name


def has_implementation(name: str) -> bool:
    return name in BUILDERS


def prepare(op: Op, cfg: RuntimeConfig, seed: int = 0, values: Values | None = None) -> PreparedOp:
    """Allocate calibrated inputs, outputs and scratch for ``op`` on ``cfg.device``; nothing runs yet."""
    torch = _torch()
    key = implementation_key(op)
    builder = BUILDERS.get(key)
    if builder is None:
        raise TstackError(f"kernel {op.name!r} (kind {op.kind}) has no PyTorch implementation in tstack.profiler.opexec")
    if op.dtype not in DTYPES:
        raise TstackError(f"op {op.name!r}: dtype {op.dtype!r} is not one of {', '.join(DTYPES)}")
    if op.dtype == "int8" and op.kind not in ("gemm", "bgemm"):
        raise TstackError(f"op {op.name!r}: int8 is only implemented for GEMMs (kind {op.kind})")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise TstackError("device='cuda' but torch.cuda.is_available() is false")
    device = torch.device(cfg.device)
    ctx = _Ctx(op, torch, device, getattr(torch, DTYPES[op.dtype]), Draw(seed, device, values))
    return builder(ctx)


def reference(op: Op, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The outputs of ``op`` from explicit formulas in float64, keyed as ``PreparedOp.outputs``.

    ``inputs`` are the PreparedOp's inputs as they were before ``run()`` (in-place kernels change
    them); for dropout, the mask the kernel drew is ``inputs['mask']``.
    """
    key = implementation_key(op)
    fn = REFERENCES.get(key)
    if fn is None:
        raise TstackError(f"kernel {op.name!r} (kind {op.kind}) has no reference implementation")
    x = {k: v.detach().to("cpu", _torch().float64) if v.is_floating_point() else v.detach().cpu() for k, v in inputs.items()}
    return fn(op, x)


# ------------------------------------------------------------------------------------------------
# GEMMs
# ------------------------------------------------------------------------------------------------
def _check_int_mm(ctx: _Ctx, M: int, N: int, K: int) -> None:
    if ctx.device.type == "cuda" and (M <= 16 or K % 8 or N % 8):
        raise TstackError(f"op {ctx.op.name!r}: int8 GEMM {M}×{N}×{K} is not supported by torch._int_mm on CUDA "
                          "(needs M > 16 and K, N multiples of 8)")


def _ref_gemm(op: Op, t: Mapping[str, Any]) -> dict[str, Any]:
    a, b = t["A"].double(), t["B"].double()
    return {"C": a @ b}


@implements("gemm", ref=_ref_gemm)
def _gemm(ctx: _Ctx) -> PreparedOp:
    torch = ctx.torch
    M, N, K, _ = ctx.op.gemm_shape
    a, b = ctx.draw.gemm_a((M, K), ctx.dtype, K), ctx.draw.gemm_b((K, N), ctx.dtype)
    if ctx.dtype == torch.int8:
        _check_int_mm(ctx, M, N, K)
        c = ctx.empty((M, N), torch.int32)

        def run() -> None:
            torch.ops.aten._int_mm.out(a, b, out=c)
    else:
        c = ctx.empty((M, N))

        def run() -> None:
            torch.mm(a, b, out=c)

    return PreparedOp(ctx.op, run, {"A": a, "B": b}, {"C": c}, "C")


@implements("bgemm", ref=_ref_gemm)
def _bgemm(ctx: _Ctx) -> PreparedOp:
    torch = ctx.torch
    M, N, K, batch = ctx.op.gemm_shape
    a, b = ctx.draw.gemm_a((batch, M, K), ctx.dtype, K), ctx.draw.gemm_b((batch, K, N), ctx.dtype)
    if ctx.dtype == torch.int8:
        _check_int_mm(ctx, M, N, K)
        c = ctx.empty((batch, M, N), torch.int32)
        slices = [(a[i], b[i], c[i]) for i in range(batch)]

        def run() -> None:
            for ai, bi, ci in slices:
                torch.ops.aten._int_mm.out(ai, bi, out=ci)
    else:
        c = ctx.empty((batch, M, N))

        def run() -> None:
            torch.bmm(a, b, out=c)

    return PreparedOp(ctx.op, run, {"A": a, "B": b}, {"C": c}, "C")


# ------------------------------------------------------------------------------------------------
# Element-wise and reduction kernels (formulas.KERNELS)
# ------------------------------------------------------------------------------------------------
def _rc(ctx: _Ctx) -> tuple[int, int]:
    return ctx.rows, ctx.cols


@implements("scale", ref=lambda op, t: {"y": t["x"] * SCALE})
def _scale(ctx: _Ctx) -> PreparedOp:
    torch = ctx.torch
    x = ctx.draw.activation(_rc(ctx), ctx.dtype)
    y = ctx.empty(_rc(ctx))
    return PreparedOp(ctx.op, lambda: torch.mul(x, SCALE, out=y), {"x": x}, {"y": y}, "y")


@implements("mask", ref=lambda op, t: {"y": t["x"] + t["mask"]})
def _mask(ctx: _Ctx) -> PreparedOp:
    torch = ctx.torch
    x = ctx.draw.activation(_rc(ctx), ctx.dtype)
    m = ctx.draw.attention_mask(ctx.cols, ctx.dtype)
    y = ctx.empty(_rc(ctx))
    return PreparedOp(ctx.op, lambda: torch.add(x, m, out=y), {"x": x, "mask": m}, {"y": y}, "y")


@implements("dropout", ref=lambda op, t: {"y": t["x"] * t["mask"] / (1 - DROPOUT_P)})
def _dropout(ctx: _Ctx) -> PreparedOp:
    torch = ctx.torch
    x = ctx.draw.activation(_rc(ctx), ctx.dtype)
    y, mask = ctx.empty(_rc(ctx)), ctx.empty(_rc(ctx), torch.bool)
    return PreparedOp(ctx.op, lambda: torch.ops.aten.native_dropout.out(x, DROPOUT_P, True, out0=y, out1=mask),
                      {"x": x}, {"y": y, "mask": mask}, "y")


@implements("dropout-bwd", ref=lambda op, t: {"dx": t["dy"] * t["mask"] / (1 - DROPOUT_P)})
def _dropout_bwd(ctx: _Ctx) -> PreparedOp:
    torch = ctx.torch
    dy = ctx.draw.activation(_rc(ctx), ctx.dtype)
    mask = ctx.draw.bernoulli(_rc(ctx), 1 - DROPOUT_P)
    dx = ctx.empty(_rc(ctx))
    scale = 1 / (1 - DROPOUT_P)
    return PreparedOp(ctx.op, lambda: torch.ops.aten.native_dropout_backward.out(dy, mask, scale, out=dx),
                      {"dy": dy, "mask": mask}, {"dx": dx}, "dx")


def _ref_softmax(op: Op, t: Mapping[str, Any]) -> dict[str, Any]:
    x = t["x"]
    e = (x - x.max(dim=-1, keepdim=True).values).exp()
    return {"y": e / e.sum(dim=-1, keepdim=True)}


@implements("softmax", ref=_ref_softmax)
def _softmax(ctx: _Ctx) -> PreparedOp:
    torch = ctx.torch
    x = ctx.draw.activation(_rc(ctx), ctx.dtype)
    y = ctx.empty(_rc(ctx))
    return PreparedOp(ctx.op, lambda: torch.ops.aten._softmax.out(x, -1, False, out=y), {"x": x}, {"y": y}, "y")


def _ref_softmax_bwd(op: Op, t: Mapping[str, Any]) -> dict[str, Any]:
    dy, y = t["dy"], t["y"]
    return {"dx": y * (dy - (dy * y).sum(dim=-1, keepdim=True))}


@implements("softmax-bwd", ref=_ref_softmax_bwd)
def _softmax_bwd(ctx: _Ctx) -> PreparedOp:
    torch = ctx.torch
    dy = ctx.draw.activation(_rc(ctx), ctx.dtype)
    y = ctx.draw.probabilities(ctx.rows, ctx.cols, ctx.dtype)
    dx = ctx.empty(_rc(ctx))
    dt = ctx.dtype
    return PreparedOp(ctx.op, lambda: torch.ops.aten._softmax_backward_data.out(dy, y, -1, dt, grad_input=dx),
                      {"dy": dy, "y": y}, {"dx": dx}, "dx")


# --- activations ---------------------------------------------------------------------------------
GELU_C = math.sqrt(2 / math.pi)


def _phi(x):
    return 0.5 * (1 + _torch().special.erf(x / math.sqrt(2)))


def _gelu(x):
    return x * _phi(x)


def _gelu_grad(x):
    return _phi(x) + x * (-0.5 * x * x).exp() / math.sqrt(2 * math.pi)


def _gelu_tanh(x):
    return 0.5 * x * (1 + (GELU_C * (x + 0.044715 * x ** 3)).tanh())


def _gelu_tanh_grad(x):
    t = (GELU_C * (x + 0.044715 * x ** 3)).tanh()
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * GELU_C * (1 + 3 * 0.044715 * x * x)


def _relu(x):
    return x.clamp_min(0)


def _relu_grad(x):
    return (x > 0).to(x.dtype)


def _silu(x):
    return x * x.sigmoid()


def _silu_grad(x):
    s = x.sigmoid()
    return s * (1 + x * (1 - s))


ACT = {"gelu": (_gelu, _gelu_grad), "gelu-tanh": (_gelu_tanh, _gelu_tanh_grad), "relu": (_relu, _relu_grad),
       "silu": (_silu, _silu_grad)}


def _inplace_act(torch, act: str) -> Callable[[Any], Any]:
    aten = torch.ops.aten
    return {
        "gelu": lambda y: aten.gelu_(y),
        "gelu-tanh": lambda y: aten.gelu_(y, approximate="tanh"),
        "relu": lambda y: aten.relu_(y),
        "silu": lambda y: aten.silu_(y),
    }[act]


def _out_act(torch, act: str) -> Callable[[Any, Any], Any]:
    aten = torch.ops.aten
    return {
        "gelu": lambda x, out: aten.gelu.out(x, out=out),
        "gelu-tanh": lambda x, out: aten.gelu.out(x, approximate="tanh", out=out),
        "relu": lambda x, out: torch.clamp_min(x, 0, out=out),
        "silu": lambda x, out: aten.silu.out(x, out=out),
    }[act]


def _grad_act(torch, act: str) -> Callable[[Any, Any, Any], Any]:
    """(dy, x, out) -> dy · act'(x), the PyTorch backward kernel of each activation."""
    aten = torch.ops.aten
    return {
        "gelu": lambda dy, x, out: aten.gelu_backward.grad_input(dy, x, approximate="none", grad_input=out),
        "gelu-tanh": lambda dy, x, out: aten.gelu_backward.grad_input(dy, x, approximate="tanh", grad_input=out),
        "relu": lambda dy, x, out: aten.threshold_backward.grad_input(dy, x, 0, grad_input=out),
        "silu": lambda dy, x, out: aten.silu_backward.grad_input(dy, x, grad_input=out),
    }[act]


def _bias_act(act: str) -> None:
    f, _ = ACT[act]

    def build(ctx: _Ctx) -> PreparedOp:
        torch = ctx.torch
        x = ctx.draw.activation(_rc(ctx), ctx.dtype)
        b = ctx.draw.normal((ctx.cols,), ctx.dtype, 0.1)
        y = ctx.empty(_rc(ctx))
        act_ = _inplace_act(torch, act)

        def run() -> None:
            torch.add(x, b, out=y)
            act_(y)

        return PreparedOp(ctx.op, run, {"x": x, "b": b}, {"y": y}, "y")

    implements(f"bias-{act}", ref=lambda op, t: {"y": f(t["x"] + t["b"])})(build)


def _act_bwd(name: str, act: str) -> None:
    _, g = ACT[act]

    def build(ctx: _Ctx) -> PreparedOp:
        torch = ctx.torch
        dy, x = ctx.draw.activation(_rc(ctx), ctx.dtype), ctx.draw.activation(_rc(ctx), ctx.dtype)
        dx = ctx.empty(_rc(ctx))
        grad = _grad_act(torch, act)
        return PreparedOp(ctx.op, lambda: grad(dy, x, dx), {"dy": dy, "x": x}, {"dx": dx}, "dx")

    implements(name, ref=lambda op, t: {"dx": t["dy"] * g(t["x"])})(build)


def _gated(act: str) -> None:
    f, g = ACT[act]

    def build(ctx: _Ctx) -> PreparedOp:
        torch = ctx.torch
        gate, up = ctx.draw.activation(_rc(ctx), ctx.dtype), ctx.draw.activation(_rc(ctx), ctx.dtype)
        y = ctx.empty(_rc(ctx))
        act_out = _out_act(torch, act)

        def run() -> None:
            act_out(gate, y)
            y.mul_(up)

        return PreparedOp(ctx.op, run, {"gate": gate, "up": up}, {"y": y}, "y")

    def build_bwd(ctx: _Ctx) -> PreparedOp:
        torch = ctx.torch
        dy, gate, up = (ctx.draw.activation(_rc(ctx), ctx.dtype) for _ in range(3))
        dgate, dup = ctx.empty(_rc(ctx)), ctx.empty(_rc(ctx))
        act_out, grad = _out_act(torch, act), _grad_act(torch, act)

        def run() -> None:
            act_out(gate, dup)  # du = dy · act(g)
            dup.mul_(dy)
            torch.mul(dy, up, out=dgate)  # dg = dy · u · act'(g)
            grad(dgate, gate, dgate)

        return PreparedOp(ctx.op, run, {"dy": dy, "gate": gate, "up": up}, {"dgate": dgate, "dup": dup}, "dgate")

    implements(f"{act}-mul", ref=lambda op, t: {"y": f(t["gate"]) * t["up"]})(build)
    implements(f"{act}-mul-bwd", ref=lambda op, t: {"dgate": t["dy"] * t["up"] * g(t["gate"]),
                                                     "dup": t["dy"] * f(t["gate"])})(build_bwd)


for _act in ("gelu", "gelu-tanh", "relu", "silu"):
    _bias_act(_act)
for _name, _act in (("gelu-bwd", "gelu"), ("gelu-tanh-bwd", "gelu-tanh"), ("relu-bwd", "relu"), ("silu-bwd", "silu")):
    _act_bwd(_name, _act)
for _act in ("gelu", "relu", "silu"):
    _gated(_act)


# --- sums -----------------------------------------------------------------------------------------
def _binary_add(name: str, a: str, b: str) -> None:
    def build(ctx: _Ctx) -> PreparedOp:
        torch = ctx.torch
        x, r = ctx.draw.activation(_rc(ctx), ctx.dtype), ctx.draw.activation(_rc(ctx), ctx.dtype)
        y = ctx.empty(_rc(ctx))
        return PreparedOp(ctx.op, lambda: torch.add(x, r, out=y), {a: x, b: r}, {"y": y}, "y")

    implements(name, ref=lambda op, t: {"y": t[a] + t[b]})(build)


_binary_add("residual", "x", "sublayer")
_binary_add("grad-accumulate", "a", "b")
_binary_add("position-add", "x", "table")


@implements("embedding-sum", ref=lambda op, t: {"y": t["word"] + t["position"] + t["type"]})
def _embedding_sum(ctx: _Ctx) -> PreparedOp:
    torch = ctx.torch
    w, p, ty = (ctx.draw.activation(_rc(ctx), ctx.dtype) for _ in range(3))
    y = ctx.empty(_rc(ctx))

    def run() -> None:
        torch.add(w, p, out=y)
        y.add_(ty)

    return PreparedOp(ctx.op, run, {"word": w, "position": p, "type": ty}, {"y": y}, "y")


@implements("bias-grad", ref=lambda op, t: {"db": t["dy"].sum(dim=0)})
def _bias_grad(ctx: _Ctx) -> PreparedOp:
    torch = ctx.torch
    dy = ctx.draw.activation(_rc(ctx), ctx.dtype)
    db = ctx.empty((ctx.cols,), torch.float32)  # fp32 gradient vector (formulas: vec_writes at 4 bytes)
    return PreparedOp(ctx.op, lambda: torch.sum(dy, 0, dtype=torch.float32, out=db), {"dy": dy}, {"db": db}, "db")


# --- normalization --------------------------------------------------------------------------------
def _ref_layernorm(op: Op, t: Mapping[str, Any]) -> dict[str, Any]:
    x = t["x"]
    mean = x.mean(dim=-1, keepdim=True)
    rstd = ((x - mean).pow(2).mean(dim=-1, keepdim=True) + EPS).rsqrt()
    return {"y": (x - mean) * rstd * t["gamma"] + t["beta"], "mean": mean, "rstd": rstd}


@implements("layernorm", ref=_ref_layernorm)
def _layernorm(ctx: _Ctx) -> PreparedOp:
    torch = ctx.torch
    aten = torch.ops.aten
    R, C = _rc(ctx)
    x = ctx.draw.norm_input(R, C, ctx.dtype)
    w, b = ctx.draw.gamma(C, ctx.dtype), ctx.draw.beta(C, ctx.dtype)
    probe = aten.native_layer_norm(x[:1], [C], w, b, EPS)  # statistics' dtype as PyTorch keeps them
    y, mean, rstd = ctx.empty((R, C)), ctx.empty((R, 1), probe[1].dtype), ctx.empty((R, 1), probe[2].dtype)
    return PreparedOp(ctx.op, lambda: aten.native_layer_norm.out(x, [C], w, b, EPS, out0=y, out1=mean, out2=rstd),
                      {"x": x, "gamma": w, "beta": b}, {"y": y, "mean": mean, "rstd": rstd}, "y")


def _ref_layernorm_bwd(op: Op, t: Mapping[str, Any]) -> dict[str, Any]:
    x, dy, gamma = t["x"], t["dy"], t["gamma"]
    C = x.shape[-1]
    mean = x.mean(dim=-1, keepdim=True)
    rstd = ((x - mean).pow(2).mean(dim=-1, keepdim=True) + EPS).rsqrt()
    xhat = (x - mean) * rstd
    g = dy * gamma
    dx = rstd / C * (C * g - g.sum(dim=-1, keepdim=True) - xhat * (g * xhat).sum(dim=-1, keepdim=True))
    return {"dx": dx, "dgamma": (dy * xhat).sum(dim=0), "dbeta": dy.sum(dim=0)}


@implements("layernorm-bwd", ref=_ref_layernorm_bwd)
def _layernorm_bwd(ctx: _Ctx) -> PreparedOp:
    torch = ctx.torch
    aten = torch.ops.aten
    R, C = _rc(ctx)
    x = ctx.draw.norm_input(R, C, ctx.dtype)
    dy = ctx.draw.activation((R, C), ctx.dtype)
    w, b = ctx.draw.gamma(C, ctx.dtype), ctx.draw.beta(C, ctx.dtype)
    _, mean, rstd = aten.native_layer_norm(x, [C], w, b, EPS)  # the statistics the forward saved
    dx, dw, db = ctx.empty((R, C)), ctx.empty((C,)), ctx.empty((C,))

    def run() -> None:
        aten.native_layer_norm_backward.out(dy, x, [C], mean, rstd, w, b, [True, True, True], out0=dx, out1=dw, out2=db)

    return PreparedOp(ctx.op, run, {"dy": dy, "x": x, "mean": mean, "rstd": rstd, "gamma": w, "beta": b},
                      {"dx": dx, "dgamma": dw, "dbeta": db}, "dx")


def _ref_rmsnorm(op: Op, t: Mapping[str, Any]) -> dict[str, Any]:
    x = t["x"]
    rstd = (x.pow(2).mean(dim=-1, keepdim=True) + EPS).rsqrt()
    return {"y": x * rstd * t["gamma"], "rstd": rstd}


@implements("rmsnorm", ref=_ref_rmsnorm)
def _rmsnorm(ctx: _Ctx) -> PreparedOp:
    torch = ctx.torch
    R, C = _rc(ctx)
    x = ctx.draw.norm_input(R, C, ctx.dtype)
    w = ctx.draw.gamma(C, ctx.dtype)
    y, rstd = ctx.empty((R, C)), ctx.empty((R, 1), torch.float32)

    def run() -> None:
        torch.linalg.vector_norm(x, 2, dim=1, keepdim=True, dtype=torch.float32, out=rstd)
        rstd.square_().mul_(1.0 / C).add_(EPS).rsqrt_()
        torch.mul(x, rstd, out=y)
        y.mul_(w)

    return PreparedOp(ctx.op, run, {"x": x, "gamma": w}, {"y": y, "rstd": rstd}, "y")


def _ref_rmsnorm_bwd(op: Op, t: Mapping[str, Any]) -> dict[str, Any]:
    x, dy, gamma = t["x"], t["dy"], t["gamma"]
    rstd = (x.pow(2).mean(dim=-1, keepdim=True) + EPS).rsqrt()
    xhat = x * rstd
    g = dy * gamma
    return {"dx": rstd * (g - xhat * (g * xhat).mean(dim=-1, keepdim=True)), "dgamma": (dy * xhat).sum(dim=0)}


@implements("rmsnorm-bwd", ref=_ref_rmsnorm_bwd)
def _rmsnorm_bwd(ctx: _Ctx) -> PreparedOp:
    torch = ctx.torch
    R, C = _rc(ctx)
    x = ctx.draw.norm_input(R, C, ctx.dtype)
    dy = ctx.draw.activation((R, C), ctx.dtype)
    w = ctx.draw.gamma(C, ctx.dtype)
    rstd = (x.float().pow(2).mean(dim=-1, keepdim=True) + EPS).rsqrt()  # the statistic the forward saved
    dx, dw = ctx.empty((R, C)), ctx.empty((C,))
    xhat, tmp, c = ctx.empty((R, C)), ctx.empty((R, C)), ctx.empty((R, 1), torch.float32)

    def run() -> None:
        torch.mul(x, rstd, out=xhat)
        torch.mul(dy, xhat, out=tmp)
        torch.sum(tmp, 0, out=dw)  # dγ = Σ_rows dy·x̂
        torch.mul(dy, w, out=dx)  # g = dy·γ
        torch.mul(dx, xhat, out=tmp)
        torch.mean(tmp, 1, keepdim=True, dtype=torch.float32, out=c)
        torch.addcmul(dx, xhat, c, value=-1, out=dx)  # g − x̂·mean(g·x̂)
        dx.mul_(rstd)

    return PreparedOp(ctx.op, run, {"dy": dy, "x": x, "rstd": rstd, "gamma": w}, {"dx": dx, "dgamma": dw}, "dx",
                      {"xhat": xhat, "tmp": tmp, "c": c})


def _ref_rope(op: Op, t: Mapping[str, Any]) -> dict[str, Any]:
    x, cos, sin = t["x"], t["cos"], t["sin"]
    h = x.shape[-1] // 2
    rot = x.clone()
    rot[:, :h] = -x[:, h:2 * h]
    rot[:, h:2 * h] = x[:, :h]
    rot[:, 2 * h:] = 0
    return {"y": x * cos + rot * sin}


@implements("rope", ref=_ref_rope)
def _rope(ctx: _Ctx) -> PreparedOp:
    """y = x·cos + rotate_half(x)·sin, rotate_half(x) = [−x₂, x₁] over the row (an odd last column is not rotated)."""
    torch = ctx.torch
    R, C = _rc(ctx)
    h = C // 2
    x = ctx.draw.activation((R, C), ctx.dtype)
    angle = torch.arange(C, dtype=torch.float64) % max(h, 1) * 0.1
    cos, sin = ctx.draw._to(angle.cos()[None, :], ctx.dtype), ctx.draw._to(angle.sin()[None, :], ctx.dtype)
    y = ctx.empty((R, C))
    y1, y2 = y[:, :h], y[:, h:2 * h]
    x1, x2 = x[:, :h], x[:, h:2 * h]
    s1, s2 = sin[:, :h], sin[:, h:2 * h]

    def run() -> None:
        torch.mul(x, cos, out=y)
        torch.addcmul(y1, x2, s1, value=-1, out=y1)
        torch.addcmul(y2, x1, s2, out=y2)

    return PreparedOp(ctx.op, run, {"x": x, "cos": cos, "sin": sin}, {"y": y}, "y")


# ------------------------------------------------------------------------------------------------
# Gathers: embedding lookup and its backward
# ------------------------------------------------------------------------------------------------
@implements("gather", ref=lambda op, t: {"y": t["table"][t["index"]]})
def _gather(ctx: _Ctx) -> PreparedOp:
    torch = ctx.torch
    R, C = _rc(ctx)
    table_rows = ctx.op.dim("table", R)
    table = ctx.draw.activation((table_rows, C), ctx.dtype)
    idx = ctx.draw.integers((R,), torch.int64, 0, table_rows)
    y = ctx.empty((R, C))
    return PreparedOp(ctx.op, lambda: torch.index_select(table, 0, idx, out=y), {"table": table, "index": idx}, {"y": y}, "y")


def _ref_gather_bwd(op: Op, t: Mapping[str, Any]) -> dict[str, Any]:
    dy = t["dy"]
    grad = _torch().zeros((op.dim("table", dy.shape[0]), dy.shape[1]), dtype=dy.dtype)
    return {"dtable": grad.index_add_(0, t["index"], dy)}


@implements("gather-bwd", ref=_ref_gather_bwd)
def _gather_bwd(ctx: _Ctx) -> PreparedOp:
    torch = ctx.torch
    R, C = _rc(ctx)
    table_rows = ctx.op.dim("table", R)
    dy = ctx.draw.activation((R, C), ctx.dtype)
    idx = ctx.draw.integers((R,), torch.int64, 0, table_rows)
    grad = ctx.empty((table_rows, C))

    def run() -> None:
        grad.zero_()
        grad.index_add_(0, idx, dy)

    return PreparedOp(ctx.op, run, {"dy": dy, "index": idx}, {"dtable": grad}, "dtable")


# ------------------------------------------------------------------------------------------------
# Optimizer stages (flat fp32 tensors of `params` elements) and mixed-precision copies
# ------------------------------------------------------------------------------------------------
def _params(ctx: _Ctx) -> int:
    return ctx.op.dim("params")


def _opt_state(ctx: _Ctx, *names: str) -> dict[str, Any]:
    """Calibrated fp32 optimizer tensors: w, g, m (first moment), v (positive second moment), u, buf."""
    P, f32, d = _params(ctx), ctx.torch.float32, ctx.draw
    make = {
        "w": lambda: d.normal((P,), f32, 0.05),
        "g": lambda: d.normal((P,), f32, 0.01),
        "m": lambda: d.normal((P,), f32, 0.001),
        "v": lambda: d.uniform((P,), f32, 1e-6, 1e-4, data=True),
        "u": lambda: d.normal((P,), f32, 1.0),
        "buf": lambda: d.normal((P,), f32, 0.01),
    }
    return {n: make[n]() for n in names}


GLOBAL_NORM = 1.0  # ‖g‖ of the whole model as stage 1 sees it (LAMB divides g by max(1, ‖g‖))


@implements("lamb-global-norm", ref=lambda op, t: {"norm": t["g"].pow(2).sum().sqrt()})
def _lamb_global_norm(ctx: _Ctx) -> PreparedOp:
    torch = ctx.torch
    s = _opt_state(ctx, "g")
    norm = ctx.empty((), torch.float32)
    return PreparedOp(ctx.op, lambda: torch.linalg.vector_norm(s["g"], 2, out=norm), s, {"norm": norm}, "norm")


def _ref_lamb1(op: Op, t: Mapping[str, Any]) -> dict[str, Any]:
    gs = t["g"] / max(1.0, GLOBAL_NORM)
    m = BETA1 * t["m"] + (1 - BETA1) * gs
    v = BETA2 * t["v"] + (1 - BETA2) * gs * gs
    bc1, bc2 = 1 - BETA1, 1 - BETA2  # bias corrections at step 1
    u = (m / bc1) / ((v / bc2).sqrt() + ADAM_EPS) + WEIGHT_DECAY * t["w"]
    return {"u": u, "m": m, "v": v}


@implements("lamb-stage1", ref=_ref_lamb1)
def _lamb_stage1(ctx: _Ctx) -> PreparedOp:
    """m, v updated in place from g/max(1, ‖g‖); u = m̂/(√v̂ + ε) + λw written to its own buffer."""
    torch = ctx.torch
    s = _opt_state(ctx, "w", "g", "m", "v")
    w, g, m, v = s["w"], s["g"], s["m"], s["v"]
    u = ctx.empty((_params(ctx),), torch.float32)
    gs = 1.0 / max(1.0, GLOBAL_NORM)
    bc1, bc2 = 1 - BETA1, 1 - BETA2

    def run() -> None:
        m.mul_(BETA1).add_(g, alpha=(1 - BETA1) * gs)
        v.mul_(BETA2).addcmul_(g, g, value=(1 - BETA2) * gs * gs)
        torch.sqrt(v, out=u)
        u.mul_(bc1 / math.sqrt(bc2)).add_(bc1 * ADAM_EPS)  # bc1·(√(v/bc2) + ε)
        torch.div(m, u, out=u)
        u.add_(w, alpha=WEIGHT_DECAY)

    return PreparedOp(ctx.op, run, s, {"u": u, "m": m, "v": v}, "u")


@implements("lamb-norms", ref=lambda op, t: {"norms": _torch().stack([t["w"].norm(), t["u"].norm()])})
def _lamb_norms(ctx: _Ctx) -> PreparedOp:
    """‖w‖ and ‖u‖ of one tensor group, for the trust ratio."""
    torch = ctx.torch
    s = _opt_state(ctx, "w", "u")
    norms = ctx.empty((2,), torch.float32)
    nw, nu = norms[0], norms[1]

    def run() -> None:
        torch.linalg.vector_norm(s["w"], 2, out=nw)
        torch.linalg.vector_norm(s["u"], 2, out=nu)

    return PreparedOp(ctx.op, run, s, {"norms": norms}, "norms")


@implements("lamb-stage2", ref=lambda op, t: {"w": t["w"] + t["rate"] * t["u"]})
def _lamb_stage2(ctx: _Ctx) -> PreparedOp:
    """w −= lr · trust ratio · u, the ratio ‖w‖/‖u‖ read from a device scalar as in fused LAMB."""
    torch = ctx.torch
    s = _opt_state(ctx, "w", "u")
    w, u = s["w"], s["u"]
    ratio = float(w.norm() / u.norm())
    rate = torch.tensor(-LR * ratio, dtype=torch.float32, device=ctx.device)
    s["rate"] = rate
    return PreparedOp(ctx.op, lambda: w.addcmul_(u, rate), s, {"w": w}, "w")


def _ref_adam(op: Op, t: Mapping[str, Any]) -> dict[str, Any]:
    g = t["g"]
    m = BETA1 * t["m"] + (1 - BETA1) * g
    v = BETA2 * t["v"] + (1 - BETA2) * g * g
    denom = (v / (1 - BETA2)).sqrt() + ADAM_EPS
    w = t["w"] * (1 - LR * WEIGHT_DECAY) - LR * (m / (1 - BETA1)) / denom
    return {"w": w, "m": m, "v": v}


@implements("adam", ref=_ref_adam)
def _adam(ctx: _Ctx) -> PreparedOp:
    """AdamW as PyTorch's fused kernel (one launch), at step 1."""
    torch = ctx.torch
    s = _opt_state(ctx, "w", "g", "m", "v")
    step = torch.ones((), dtype=torch.float32, device=ctx.device)
    lists = ([s["w"]], [s["g"]], [s["m"]], [s["v"]], [], [step])

    def run() -> None:
        torch._fused_adamw_(*lists, lr=LR, beta1=BETA1, beta2=BETA2, weight_decay=WEIGHT_DECAY, eps=ADAM_EPS,
                            amsgrad=False, maximize=False)

    return PreparedOp(ctx.op, run, s, {"w": s["w"], "m": s["m"], "v": s["v"]}, "w")


def _ref_sgd(op: Op, t: Mapping[str, Any]) -> dict[str, Any]:
    buf = MOMENTUM * t["buf"] + t["g"]
    return {"w": t["w"] - LR * buf, "buf": buf}


@implements("sgd", ref=_ref_sgd)
def _sgd(ctx: _Ctx) -> PreparedOp:
    """SGD with momentum as PyTorch's fused kernel: buf = μ·buf + g; w −= lr·buf."""
    torch = ctx.torch
    s = _opt_state(ctx, "w", "g", "buf")

    def run() -> None:
        torch._fused_sgd_([s["w"]], [s["g"]], [s["buf"]], weight_decay=0.0, momentum=MOMENTUM, lr=LR, dampening=0.0,
                          nesterov=False, maximize=False, is_first_step=False)

    return PreparedOp(ctx.op, run, s, {"w": s["w"], "buf": s["buf"]}, "w")


@implements("grad-to-master", ref=lambda op, t: {"master_grad": t["grad"] * INV_LOSS_SCALE})
def _grad_to_master(ctx: _Ctx) -> PreparedOp:
    torch = ctx.torch
    grad = ctx.draw.normal((_params(ctx),), torch.float16)  # loss-scaled half gradient
    master = ctx.empty((_params(ctx),), torch.float32)
    # A 1-element fp32 tensor (not a Python scalar) makes the multiply run in fp32, as apex's unscale
    # does; half × Python float would compute in fp16 and round small gradients to fp16 subnormals.
    inv = torch.full((1,), INV_LOSS_SCALE, dtype=torch.float32, device=ctx.device)
    return PreparedOp(ctx.op, lambda: torch.mul(grad, inv, out=master), {"grad": grad},
                      {"master_grad": master}, "master_grad")


@implements("master-to-model", ref=lambda op, t: {"model": t["master"]})
def _master_to_model(ctx: _Ctx) -> PreparedOp:
    torch = ctx.torch
    master = ctx.draw.normal((_params(ctx),), torch.float32, 0.05, normal_in=torch.float16)
    model = ctx.empty((_params(ctx),), torch.float16)
    return PreparedOp(ctx.op, lambda: model.copy_(master), {"master": master}, {"model": model}, "model")

"""Element-wise and reduction kernels of ``formulas.KERNELS``: scale, mask, dropout, softmax, activations, sums."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from tstack.profiler.opexec.core import DROPOUT_P, SCALE, BuildContext, PreparedOp, implements
from tstack.profiler.runtime import load_torch
from tstack.workload.op import Op


@implements("scale", ref=lambda op, t: {"y": t["x"] * SCALE})
def _scale(ctx: BuildContext) -> PreparedOp:
    torch = ctx.torch
    x = ctx.draw.activation(ctx.rc, ctx.dtype)
    y = ctx.empty(ctx.rc)
    return PreparedOp(op=ctx.op, run=lambda: torch.mul(x, SCALE, out=y), inputs={"x": x}, outputs={"y": y}, primary="y")


@implements("mask", ref=lambda op, t: {"y": t["x"] + t["mask"]})
def _mask(ctx: BuildContext) -> PreparedOp:
    torch = ctx.torch
    x = ctx.draw.activation(ctx.rc, ctx.dtype)
    m = ctx.draw.attention_mask(ctx.cols, ctx.dtype)
    y = ctx.empty(ctx.rc)
    return PreparedOp(op=ctx.op, run=lambda: torch.add(x, m, out=y), inputs={"x": x, "mask": m}, outputs={"y": y}, primary="y")


@implements("dropout", ref=lambda op, t: {"y": t["x"] * t["mask"] / (1 - DROPOUT_P)})
def _dropout(ctx: BuildContext) -> PreparedOp:
    torch = ctx.torch
    x = ctx.draw.activation(ctx.rc, ctx.dtype)
    y, mask = ctx.empty(ctx.rc), ctx.empty(ctx.rc, torch.bool)
    return PreparedOp(op=ctx.op, run=lambda: torch.ops.aten.native_dropout.out(x, DROPOUT_P, True, out0=y, out1=mask),
                      inputs={"x": x}, outputs={"y": y, "mask": mask}, primary="y")


@implements("dropout-bwd", ref=lambda op, t: {"dx": t["dy"] * t["mask"] / (1 - DROPOUT_P)})
def _dropout_bwd(ctx: BuildContext) -> PreparedOp:
    torch = ctx.torch
    dy = ctx.draw.activation(ctx.rc, ctx.dtype)
    mask = ctx.draw.bernoulli(ctx.rc, 1 - DROPOUT_P)
    dx = ctx.empty(ctx.rc)
    scale = 1 / (1 - DROPOUT_P)
    return PreparedOp(op=ctx.op, run=lambda: torch.ops.aten.native_dropout_backward.out(dy, mask, scale, out=dx),
                      inputs={"dy": dy, "mask": mask}, outputs={"dx": dx}, primary="dx")


def _ref_softmax(op: Op, t: Mapping[str, Any]) -> dict[str, Any]:
    x = t["x"]
    e = (x - x.max(dim=-1, keepdim=True).values).exp()
    return {"y": e / e.sum(dim=-1, keepdim=True)}


@implements("softmax", ref=_ref_softmax)
def _softmax(ctx: BuildContext) -> PreparedOp:
    torch = ctx.torch
    x = ctx.draw.activation(ctx.rc, ctx.dtype)
    y = ctx.empty(ctx.rc)
    return PreparedOp(op=ctx.op, run=lambda: torch.ops.aten._softmax.out(x, -1, False, out=y), inputs={"x": x}, outputs={"y": y},
                      primary="y")


def _ref_softmax_bwd(op: Op, t: Mapping[str, Any]) -> dict[str, Any]:
    dy, y = t["dy"], t["y"]
    return {"dx": y * (dy - (dy * y).sum(dim=-1, keepdim=True))}


@implements("softmax-bwd", ref=_ref_softmax_bwd)
def _softmax_bwd(ctx: BuildContext) -> PreparedOp:
    torch = ctx.torch
    dy = ctx.draw.activation(ctx.rc, ctx.dtype)
    y = ctx.draw.probabilities(ctx.rows, ctx.cols, ctx.dtype)
    dx = ctx.empty(ctx.rc)
    dt = ctx.dtype
    return PreparedOp(op=ctx.op, run=lambda: torch.ops.aten._softmax_backward_data.out(dy, y, -1, dt, grad_input=dx),
                      inputs={"dy": dy, "y": y}, outputs={"dx": dx}, primary="dx")


# --- activations ---------------------------------------------------------------------------------
GELU_C = math.sqrt(2 / math.pi)


def _phi(x):
    return 0.5 * (1 + load_torch().special.erf(x / math.sqrt(2)))


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

    def build(ctx: BuildContext) -> PreparedOp:
        torch = ctx.torch
        x = ctx.draw.activation(ctx.rc, ctx.dtype)
        b = ctx.draw.normal((ctx.cols,), ctx.dtype, 0.1)
        y = ctx.empty(ctx.rc)
        act_ = _inplace_act(torch, act)

        def run() -> None:
            torch.add(x, b, out=y)
            act_(y)

        return PreparedOp(op=ctx.op, run=run, inputs={"x": x, "b": b}, outputs={"y": y}, primary="y")

    implements(f"bias-{act}", ref=lambda op, t: {"y": f(t["x"] + t["b"])})(build)


def _act_bwd(name: str, act: str) -> None:
    _, g = ACT[act]

    def build(ctx: BuildContext) -> PreparedOp:
        torch = ctx.torch
        dy, x = ctx.draw.activation(ctx.rc, ctx.dtype), ctx.draw.activation(ctx.rc, ctx.dtype)
        dx = ctx.empty(ctx.rc)
        grad = _grad_act(torch, act)
        return PreparedOp(op=ctx.op, run=lambda: grad(dy, x, dx), inputs={"dy": dy, "x": x}, outputs={"dx": dx}, primary="dx")

    implements(name, ref=lambda op, t: {"dx": t["dy"] * g(t["x"])})(build)


def _gated(act: str) -> None:
    f, g = ACT[act]

    def build(ctx: BuildContext) -> PreparedOp:
        torch = ctx.torch
        gate, up = ctx.draw.activation(ctx.rc, ctx.dtype), ctx.draw.activation(ctx.rc, ctx.dtype)
        y = ctx.empty(ctx.rc)
        act_out = _out_act(torch, act)

        def run() -> None:
            act_out(gate, y)
            y.mul_(up)

        return PreparedOp(op=ctx.op, run=run, inputs={"gate": gate, "up": up}, outputs={"y": y}, primary="y")

    def build_bwd(ctx: BuildContext) -> PreparedOp:
        torch = ctx.torch
        dy, gate, up = (ctx.draw.activation(ctx.rc, ctx.dtype) for _ in range(3))
        dgate, dup = ctx.empty(ctx.rc), ctx.empty(ctx.rc)
        act_out, grad = _out_act(torch, act), _grad_act(torch, act)

        def run() -> None:
            act_out(gate, dup)  # du = dy · act(g)
            dup.mul_(dy)
            torch.mul(dy, up, out=dgate)  # dg = dy · u · act'(g)
            grad(dgate, gate, dgate)

        return PreparedOp(op=ctx.op, run=run, inputs={"dy": dy, "gate": gate, "up": up}, outputs={"dgate": dgate, "dup": dup},
                          primary="dgate")

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
    def build(ctx: BuildContext) -> PreparedOp:
        torch = ctx.torch
        x, r = ctx.draw.activation(ctx.rc, ctx.dtype), ctx.draw.activation(ctx.rc, ctx.dtype)
        y = ctx.empty(ctx.rc)
        return PreparedOp(op=ctx.op, run=lambda: torch.add(x, r, out=y), inputs={a: x, b: r}, outputs={"y": y}, primary="y")

    implements(name, ref=lambda op, t: {"y": t[a] + t[b]})(build)


_binary_add("residual", "x", "sublayer")
_binary_add("grad-accumulate", "a", "b")
_binary_add("position-add", "x", "table")


@implements("embedding-sum", ref=lambda op, t: {"y": t["word"] + t["position"] + t["type"]})
def _embedding_sum(ctx: BuildContext) -> PreparedOp:
    torch = ctx.torch
    w, p, ty = (ctx.draw.activation(ctx.rc, ctx.dtype) for _ in range(3))
    y = ctx.empty(ctx.rc)

    def run() -> None:
        torch.add(w, p, out=y)
        y.add_(ty)

    return PreparedOp(op=ctx.op, run=run, inputs={"word": w, "position": p, "type": ty}, outputs={"y": y}, primary="y")


@implements("bias-grad", ref=lambda op, t: {"db": t["dy"].sum(dim=0)})
def _bias_grad(ctx: BuildContext) -> PreparedOp:
    torch = ctx.torch
    dy = ctx.draw.activation(ctx.rc, ctx.dtype)
    db = ctx.empty((ctx.cols,), torch.float32)  # fp32 gradient vector (formulas: vec_writes at 4 bytes)
    return PreparedOp(op=ctx.op, run=lambda: torch.sum(dy, 0, dtype=torch.float32, out=db), inputs={"dy": dy},
                      outputs={"db": db}, primary="db")

"""LayerNorm, RMSNorm and rotary embedding with their backward kernels; the embedding gathers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tstack.profiler.opexec.core import EPS, BuildContext, PreparedOp, implements
from tstack.profiler.runtime import load_torch
from tstack.workload.op import Op, OpKind


# --- normalization --------------------------------------------------------------------------------
def _ref_layernorm(op: Op, t: Mapping[str, Any]) -> dict[str, Any]:
    x = t["x"]
    mean = x.mean(dim=-1, keepdim=True)
    rstd = ((x - mean).pow(2).mean(dim=-1, keepdim=True) + EPS).rsqrt()
    return {"y": (x - mean) * rstd * t["gamma"] + t["beta"], "mean": mean, "rstd": rstd}


@implements("layernorm", ref=_ref_layernorm)
def _layernorm(ctx: BuildContext) -> PreparedOp:
    torch = ctx.torch
    aten = torch.ops.aten
    R, C = ctx.rc
    x = ctx.draw.norm_input(R, C, ctx.dtype)
    w, b = ctx.draw.gamma(C, ctx.dtype), ctx.draw.beta(C, ctx.dtype)
    probe = aten.native_layer_norm(x[:1], [C], w, b, EPS)  # statistics' dtype as PyTorch keeps them
    y, mean, rstd = ctx.empty((R, C)), ctx.empty((R, 1), probe[1].dtype), ctx.empty((R, 1), probe[2].dtype)
    return PreparedOp(op=ctx.op, run=lambda: aten.native_layer_norm.out(x, [C], w, b, EPS, out0=y, out1=mean, out2=rstd),
                      inputs={"x": x, "gamma": w, "beta": b}, outputs={"y": y, "mean": mean, "rstd": rstd}, primary="y")


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
def _layernorm_bwd(ctx: BuildContext) -> PreparedOp:
    torch = ctx.torch
    aten = torch.ops.aten
    R, C = ctx.rc
    x = ctx.draw.norm_input(R, C, ctx.dtype)
    dy = ctx.draw.activation((R, C), ctx.dtype)
    w, b = ctx.draw.gamma(C, ctx.dtype), ctx.draw.beta(C, ctx.dtype)
    _, mean, rstd = aten.native_layer_norm(x, [C], w, b, EPS)  # the statistics the forward saved
    dx, dw, db = ctx.empty((R, C)), ctx.empty((C,)), ctx.empty((C,))

    def run() -> None:
        aten.native_layer_norm_backward.out(dy, x, [C], mean, rstd, w, b, [True, True, True], out0=dx, out1=dw, out2=db)

    return PreparedOp(op=ctx.op, run=run, inputs={"dy": dy, "x": x, "mean": mean, "rstd": rstd, "gamma": w, "beta": b},
                      outputs={"dx": dx, "dgamma": dw, "dbeta": db}, primary="dx")


def _ref_rmsnorm(op: Op, t: Mapping[str, Any]) -> dict[str, Any]:
    x = t["x"]
    rstd = (x.pow(2).mean(dim=-1, keepdim=True) + EPS).rsqrt()
    return {"y": x * rstd * t["gamma"], "rstd": rstd}


@implements("rmsnorm", ref=_ref_rmsnorm)
def _rmsnorm(ctx: BuildContext) -> PreparedOp:
    torch = ctx.torch
    R, C = ctx.rc
    x = ctx.draw.norm_input(R, C, ctx.dtype)
    w = ctx.draw.gamma(C, ctx.dtype)
    y, rstd = ctx.empty((R, C)), ctx.empty((R, 1), torch.float32)

    def run() -> None:
        torch.linalg.vector_norm(x, 2, dim=1, keepdim=True, dtype=torch.float32, out=rstd)
        rstd.square_().mul_(1.0 / C).add_(EPS).rsqrt_()
        torch.mul(x, rstd, out=y)
        y.mul_(w)

    return PreparedOp(op=ctx.op, run=run, inputs={"x": x, "gamma": w}, outputs={"y": y, "rstd": rstd}, primary="y")


def _ref_rmsnorm_bwd(op: Op, t: Mapping[str, Any]) -> dict[str, Any]:
    x, dy, gamma = t["x"], t["dy"], t["gamma"]
    rstd = (x.pow(2).mean(dim=-1, keepdim=True) + EPS).rsqrt()
    xhat = x * rstd
    g = dy * gamma
    return {"dx": rstd * (g - xhat * (g * xhat).mean(dim=-1, keepdim=True)), "dgamma": (dy * xhat).sum(dim=0)}


@implements("rmsnorm-bwd", ref=_ref_rmsnorm_bwd)
def _rmsnorm_bwd(ctx: BuildContext) -> PreparedOp:
    torch = ctx.torch
    R, C = ctx.rc
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

    return PreparedOp(op=ctx.op, run=run, inputs={"dy": dy, "x": x, "rstd": rstd, "gamma": w}, outputs={"dx": dx, "dgamma": dw},
                      primary="dx", scratch={"xhat": xhat, "tmp": tmp, "c": c})


def _ref_rope(op: Op, t: Mapping[str, Any]) -> dict[str, Any]:
    x, cos, sin = t["x"], t["cos"], t["sin"]
    h = x.shape[-1] // 2
    rot = x.clone()
    rot[:, :h] = -x[:, h:2 * h]
    rot[:, h:2 * h] = x[:, :h]
    rot[:, 2 * h:] = 0
    return {"y": x * cos + rot * sin}


@implements("rope", ref=_ref_rope)
def _rope(ctx: BuildContext) -> PreparedOp:
    """y = x·cos + rotate_half(x)·sin, rotate_half(x) = [−x₂, x₁] over the row (an odd last column is not rotated)."""
    torch = ctx.torch
    R, C = ctx.rc
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

    return PreparedOp(op=ctx.op, run=run, inputs={"x": x, "cos": cos, "sin": sin}, outputs={"y": y}, primary="y")


@implements(OpKind.GATHER, ref=lambda op, t: {"y": t["table"][t["index"]]})
def _gather(ctx: BuildContext) -> PreparedOp:
    torch = ctx.torch
    R, C = ctx.rc
    table_rows = ctx.op.dim("table", R)
    table = ctx.draw.activation((table_rows, C), ctx.dtype)
    idx = ctx.draw.integers((R,), torch.int64, 0, table_rows)
    y = ctx.empty((R, C))
    return PreparedOp(op=ctx.op, run=lambda: torch.index_select(table, 0, idx, out=y), inputs={"table": table, "index": idx},
                      outputs={"y": y}, primary="y")


def _ref_gather_bwd(op: Op, t: Mapping[str, Any]) -> dict[str, Any]:
    dy = t["dy"]
    grad = load_torch().zeros((op.dim("table", dy.shape[0]), dy.shape[1]), dtype=dy.dtype)
    return {"dtable": grad.index_add_(0, t["index"], dy)}


@implements("gather-bwd", ref=_ref_gather_bwd)
def _gather_bwd(ctx: BuildContext) -> PreparedOp:
    torch = ctx.torch
    R, C = ctx.rc
    table_rows = ctx.op.dim("table", R)
    dy = ctx.draw.activation((R, C), ctx.dtype)
    idx = ctx.draw.integers((R,), torch.int64, 0, table_rows)
    grad = ctx.empty((table_rows, C))

    def run() -> None:
        grad.zero_()
        grad.index_add_(0, idx, dy)

    return PreparedOp(op=ctx.op, run=run, inputs={"dy": dy, "index": idx}, outputs={"dtable": grad}, primary="dtable")

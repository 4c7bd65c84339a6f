"""Optimizer stages on flat fp32 tensors of ``params`` elements and the mixed-precision copies."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from tstack.profiler.opexec.core import (
    ADAM_EPS,
    BETA1,
    BETA2,
    INV_LOSS_SCALE,
    LR,
    MOMENTUM,
    WEIGHT_DECAY,
    BuildContext,
    PreparedOp,
    implements,
)
from tstack.profiler.runtime import load_torch
from tstack.workload.op import Op


def _params(ctx: BuildContext) -> int:
    return ctx.op.dim("params")


def _opt_state(ctx: BuildContext, *names: str) -> dict[str, Any]:
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
def _lamb_global_norm(ctx: BuildContext) -> PreparedOp:
    torch = ctx.torch
    s = _opt_state(ctx, "g")
    norm = ctx.empty((), torch.float32)
    return PreparedOp(op=ctx.op, run=lambda: torch.linalg.vector_norm(s["g"], 2, out=norm), inputs=s, outputs={"norm": norm},
                      primary="norm")


def _ref_lamb1(op: Op, t: Mapping[str, Any]) -> dict[str, Any]:
    gs = t["g"] / max(1.0, GLOBAL_NORM)
    m = BETA1 * t["m"] + (1 - BETA1) * gs
    v = BETA2 * t["v"] + (1 - BETA2) * gs * gs
    bc1, bc2 = 1 - BETA1, 1 - BETA2  # bias corrections at step 1
    u = (m / bc1) / ((v / bc2).sqrt() + ADAM_EPS) + WEIGHT_DECAY * t["w"]
    return {"u": u, "m": m, "v": v}


@implements("lamb-stage1", ref=_ref_lamb1)
def _lamb_stage1(ctx: BuildContext) -> PreparedOp:
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

    return PreparedOp(op=ctx.op, run=run, inputs=s, outputs={"u": u, "m": m, "v": v}, primary="u")


@implements("lamb-norms", ref=lambda op, t: {"norms": load_torch().stack([t["w"].norm(), t["u"].norm()])})
def _lamb_norms(ctx: BuildContext) -> PreparedOp:
    """‖w‖ and ‖u‖ of one tensor group, for the trust ratio."""
    torch = ctx.torch
    s = _opt_state(ctx, "w", "u")
    norms = ctx.empty((2,), torch.float32)
    nw, nu = norms[0], norms[1]

    def run() -> None:
        torch.linalg.vector_norm(s["w"], 2, out=nw)
        torch.linalg.vector_norm(s["u"], 2, out=nu)

    return PreparedOp(op=ctx.op, run=run, inputs=s, outputs={"norms": norms}, primary="norms")


@implements("lamb-stage2", ref=lambda op, t: {"w": t["w"] + t["rate"] * t["u"]})
def _lamb_stage2(ctx: BuildContext) -> PreparedOp:
    """w −= lr · trust ratio · u, the ratio ‖w‖/‖u‖ read from a device scalar as in fused LAMB."""
    torch = ctx.torch
    s = _opt_state(ctx, "w", "u")
    w, u = s["w"], s["u"]
    ratio = float(w.norm() / u.norm())
    rate = torch.tensor(-LR * ratio, dtype=torch.float32, device=ctx.device)
    s["rate"] = rate
    return PreparedOp(op=ctx.op, run=lambda: w.addcmul_(u, rate), inputs=s, outputs={"w": w}, primary="w")


def _ref_adam(op: Op, t: Mapping[str, Any]) -> dict[str, Any]:
    g = t["g"]
    m = BETA1 * t["m"] + (1 - BETA1) * g
    v = BETA2 * t["v"] + (1 - BETA2) * g * g
    denom = (v / (1 - BETA2)).sqrt() + ADAM_EPS
    w = t["w"] * (1 - LR * WEIGHT_DECAY) - LR * (m / (1 - BETA1)) / denom
    return {"w": w, "m": m, "v": v}


@implements("adam", ref=_ref_adam)
def _adam(ctx: BuildContext) -> PreparedOp:
    """AdamW as PyTorch's fused kernel (one launch), at step 1."""
    torch = ctx.torch
    s = _opt_state(ctx, "w", "g", "m", "v")
    step = torch.ones((), dtype=torch.float32, device=ctx.device)
    lists = ([s["w"]], [s["g"]], [s["m"]], [s["v"]], [], [step])

    def run() -> None:
        torch._fused_adamw_(*lists, lr=LR, beta1=BETA1, beta2=BETA2, weight_decay=WEIGHT_DECAY, eps=ADAM_EPS,
                            amsgrad=False, maximize=False)

    return PreparedOp(op=ctx.op, run=run, inputs=s, outputs={"w": s["w"], "m": s["m"], "v": s["v"]}, primary="w")


def _ref_sgd(op: Op, t: Mapping[str, Any]) -> dict[str, Any]:
    buf = MOMENTUM * t["buf"] + t["g"]
    return {"w": t["w"] - LR * buf, "buf": buf}


@implements("sgd", ref=_ref_sgd)
def _sgd(ctx: BuildContext) -> PreparedOp:
    """SGD with momentum as PyTorch's fused kernel: buf = μ·buf + g; w −= lr·buf."""
    torch = ctx.torch
    s = _opt_state(ctx, "w", "g", "buf")

    def run() -> None:
        torch._fused_sgd_([s["w"]], [s["g"]], [s["buf"]], weight_decay=0.0, momentum=MOMENTUM, lr=LR, dampening=0.0,
                          nesterov=False, maximize=False, is_first_step=False)

    return PreparedOp(op=ctx.op, run=run, inputs=s, outputs={"w": s["w"], "buf": s["buf"]}, primary="w")


@implements("grad-to-master", ref=lambda op, t: {"master_grad": t["grad"] * INV_LOSS_SCALE})
def _grad_to_master(ctx: BuildContext) -> PreparedOp:
    torch = ctx.torch
    grad = ctx.draw.normal((_params(ctx),), torch.float16)  # loss-scaled half gradient
    master = ctx.empty((_params(ctx),), torch.float32)
    # A 1-element fp32 tensor (not a Python scalar) makes the multiply run in fp32, as apex's unscale
    # does; half × Python float would compute in fp16 and round small gradients to fp16 subnormals.
    inv = torch.full((1,), INV_LOSS_SCALE, dtype=torch.float32, device=ctx.device)
    return PreparedOp(op=ctx.op, run=lambda: torch.mul(grad, inv, out=master), inputs={"grad": grad},
                      outputs={"master_grad": master}, primary="master_grad")


@implements("master-to-model", ref=lambda op, t: {"model": t["master"]})
def _master_to_model(ctx: BuildContext) -> PreparedOp:
    torch = ctx.torch
    master = ctx.draw.normal((_params(ctx),), torch.float32, 0.05, normal_in=torch.float16)
    model = ctx.empty((_params(ctx),), torch.float16)
    return PreparedOp(op=ctx.op, run=lambda: model.copy_(master), inputs={"master": master}, outputs={"model": model},
                      primary="model")

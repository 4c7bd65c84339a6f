"""The fused attention kernel (``attn.sdpa``: ``--attention sdpa`` or a fusion profile's attention rule).

Its dims are those of the fused forward score product (workload.fusion.fuse_attention): M keys, N the queries of
one KV head (its query heads stacked), K the head width, ``batch`` sequences × KV heads. The kernel is PyTorch's
``F.scaled_dot_product_attention`` of q (batch, N, K) against k and v (batch, M, K): the products and the bytes of
the model's q (B, h, Sq, d) against k, v (B, hk, Skv, d). No mask and no dropout (the cost model's fused kernel
counts the full N×M scores). The forward pass (or a recomputation) is one call. A backward op runs the kernel's
backward through autograd on a forward recorded once at prepare time. The kernel has no ``out=`` variant: each call
returns fresh tensors (the output, or the three gradients), which ``outputs`` then holds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from tstack.profiler.opexec.core import BuildContext, PreparedOp, implements
from tstack.workload.fusion import FORWARD_PASSES
from tstack.workload.labels import FUSED_ATTENTION
from tstack.workload.op import Op


def _shapes(op: Op) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    M, N, K, batch = op.gemm_shape
    return (batch, N, K), (batch, M, K)


def _ref(op: Op, t: Mapping[str, Any]) -> dict[str, Any]:
    import torch

    forward = op.label("pass") in FORWARD_PASSES
    q, k, v = (t[n].clone().requires_grad_(not forward) for n in "qkv")
    p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    o = p @ v
    if forward:
        return {"o": o}
    dq, dk, dv = torch.autograd.grad(o, (q, k, v), t["do"])
    return {"dq": dq, "dk": dk, "dv": dv}


@implements(FUSED_ATTENTION, f"{FUSED_ATTENTION}-bwd", ref=_ref)
def _attention(ctx: BuildContext) -> PreparedOp:
    torch = ctx.torch
    sdpa = torch.nn.functional.scaled_dot_product_attention
    q_shape, kv_shape = _shapes(ctx.op)
    q, k, v = (ctx.draw.normal(s, ctx.dtype) for s in (q_shape, kv_shape, kv_shape))
    if ctx.op.label("pass") in FORWARD_PASSES:
        result: dict[str, Any] = {"o": torch.zeros_like(q)}

        def forward() -> None:
            result["o"] = sdpa(q, k, v)

        return PreparedOp(op=ctx.op, run=forward, inputs={"q": q, "k": k, "v": v}, outputs=result, primary="o")
    do = ctx.draw.normal(q_shape, ctx.dtype)
    leaves = tuple(x.clone().requires_grad_(True) for x in (q, k, v))
    with torch.enable_grad():
        out = sdpa(*leaves)
    outputs: dict[str, Any] = {"dq": torch.zeros_like(q), "dk": torch.zeros_like(k), "dv": torch.zeros_like(v)}

    def backward() -> None:
        outputs["dq"], outputs["dk"], outputs["dv"] = torch.autograd.grad(out, leaves, do, retain_graph=True)

    return PreparedOp(op=ctx.op, run=backward, inputs={"q": q, "k": k, "v": v, "do": do}, outputs=outputs,
                      primary="dq")

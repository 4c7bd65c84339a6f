"""GEMMs and batched GEMMs (fp32, fp16, bf16; int8 through ``torch._int_mm``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tstack.errors import TstackError
from tstack.profiler.opexec.core import BuildContext, PreparedOp, implements
from tstack.workload.op import Op, OpKind


def _check_int_mm(ctx: BuildContext, M: int, N: int, K: int) -> None:
    if ctx.device.type == "cuda" and (M <= 16 or K % 8 or N % 8):
        raise TstackError(f"op {ctx.op.name!r}: int8 GEMM {M}×{N}×{K} is not supported by torch._int_mm on CUDA "
                          "(needs M > 16 and K, N multiples of 8)")


def _ref_gemm(op: Op, t: Mapping[str, Any]) -> dict[str, Any]:
    a, b = t["A"].double(), t["B"].double()
    return {"C": a @ b}


@implements(OpKind.GEMM, ref=_ref_gemm)
def _gemm(ctx: BuildContext) -> PreparedOp:
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

    return PreparedOp(op=ctx.op, run=run, inputs={"A": a, "B": b}, outputs={"C": c}, primary="C")


@implements(OpKind.BGEMM, ref=_ref_gemm)
def _bgemm(ctx: BuildContext) -> PreparedOp:
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

    return PreparedOp(op=ctx.op, run=run, inputs={"A": a, "B": b}, outputs={"C": c}, primary="C")

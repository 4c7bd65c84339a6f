"""Framework copies of eager execution: ``kv-cache-cat`` (DynamicCache's ``torch.cat`` of the cache and the new
K or V) and ``repeat-kv`` (eager grouped-query attention's expansion of K or V to one copy per query head).

Both are rows×cols tensors at the Op's dtype; ``repeat`` is how many times each input element is written.
"""

from __future__ import annotations

from tstack.profiler.opexec.core import BuildContext, PreparedOp, implements
from tstack.profiler.runtime import load_torch


@implements("kv-cache-cat", ref=lambda op, t: {"y": load_torch().cat((t["cache"], t["new"]))})
def _kv_cache_cat(ctx: BuildContext) -> PreparedOp:
    torch = ctx.torch
    rows, cols = ctx.rc
    cache = ctx.draw.activation((rows - 1, cols), ctx.dtype)
    new = ctx.draw.activation((1, cols), ctx.dtype)
    y = ctx.empty(ctx.rc)
    return PreparedOp(op=ctx.op, run=lambda: torch.cat((cache, new), out=y), inputs={"cache": cache, "new": new},
                      outputs={"y": y}, primary="y")


@implements("repeat-kv", ref=lambda op, t: {"y": t["x"].repeat_interleave(op.dim("repeat"), dim=0)})
def _repeat_kv(ctx: BuildContext) -> PreparedOp:
    rows, cols = ctx.rc
    n = ctx.op.dim("repeat")
    x = ctx.draw.activation(ctx.rc, ctx.dtype)
    y = ctx.empty((rows * n, cols))
    expanded = x.view(rows, 1, cols).expand(rows, n, cols)
    return PreparedOp(op=ctx.op, run=lambda: y.view(rows, n, cols).copy_(expanded), inputs={"x": x}, outputs={"y": y},
                      primary="y")

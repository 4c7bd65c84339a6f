"""Measure fused against unfused kernels (kernels.fused) on this machine, with the profiler's discipline.

Timing: inside ``runtime.controlled`` (threads fixed, flush-to-zero on), ``timing.time_callable`` with warm-up and
adaptive batching, ``plan.rounds`` passes in alternating order, and the smallest median of the rounds
(``timing.TimingPlan`` says why). The allocator: every unfused step writes into preallocated buffers; the caller
runs under ``runtime.MALLOC_POLICY`` (``reexec_with_malloc_policy``) for the fused forms that allocate their result.
Kernel counts: the leaf ATen operators and inductor C++ kernels that ``torch.profiler`` records for one call
(views, reshapes and allocations are not kernels).
"""

from __future__ import annotations

from dataclasses import dataclass

from tstack.kernels.fused import Case, max_difference
from tstack.profiler.runtime import RuntimeConfig, controlled, load_torch
from tstack.profiler.timing import TimingPlan, time_callable

# Operators that launch no kernel of their own: views, allocations, dispatch wrappers (their children may).
NOT_KERNELS = {"aten::empty", "aten::empty_like", "aten::empty_strided", "aten::view", "aten::reshape", "aten::t",
               "aten::transpose", "aten::expand", "aten::as_strided", "aten::slice", "aten::select", "aten::unsqueeze",
               "aten::squeeze", "aten::permute", "aten::detach", "aten::resize_", "aten::lift_fresh", "aten::alias",
               "aten::_unsafe_view", "aten::_reshape_alias", "aten::split", "aten::narrow", "aten::item",
               "aten::_local_scalar_dense", "aten::result_type", "aten::to", "aten::_to_copy", "aten::contiguous",
               "aten::resolve_conj", "aten::resolve_neg", "aten::scalar_tensor", "aten::matmul",
               "aten::scaled_dot_product_attention", "aten::softmax"}


@dataclass(frozen=True)
class FusionMeasurement:
    rule: str
    shape: str
    unfused_seconds: float
    fused_seconds: float
    unfused_kernels: int
    fused_kernels: int
    max_abs_error: float

    @property
    def speedup(self) -> float:
        return self.unfused_seconds / self.fused_seconds


def kernel_count(fn) -> int:
    """Kernels one call launches: inductor's ``graph_N_cpp_fused_*`` kernels, and the outermost ``aten::`` operators that
    compute (a wrapper, a view or an allocation is looked through to the operators it calls)."""
    torch = load_torch()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    tops = [e for e in prof.events() if e.cpu_parent is None]
    count = 0
    while tops:
        e = tops.pop()
        if "cpp_fused" in e.name or (e.name.startswith("aten::") and e.name not in NOT_KERNELS):
            count += 1
        else:
            tops += e.cpu_children
    return count


def measure_case(case: Case, cfg: RuntimeConfig, plan: TimingPlan) -> FusionMeasurement:
    """Values compared first (one call each, from the same state), then kernels counted, then timed."""
    with controlled(cfg):
        error = max_difference(case.unfused(), case.fused())
        kernels = kernel_count(case.unfused), kernel_count(case.fused)
        best = [float("inf"), float("inf")]
        for r in range(plan.rounds):
            order = (0, 1) if r % 2 == 0 else (1, 0)
            for i in order:
                fn = (case.unfused, case.fused)[i]
                t = time_callable(fn, cfg, warmup=plan.warmup, repeats=plan.repeats, min_time=plan.min_time)
                best[i] = min(best[i], t.median)
    return FusionMeasurement(case.rule, case.shape, best[0], best[1], kernels[0], kernels[1], error)

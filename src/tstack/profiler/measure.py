"""Measure a workload: every Op run for real at its shapes, timed, and returned as Costs in a Breakdown.

``measure(model, run, cfg)`` builds the same workload as ``tstack.analyze`` (``workload.build``,
not collapsed), so the measured Breakdown has the same Ops with the same labels, one to one, and
every group-by and hierarchy works on it as on a predicted one. ``measure_ops`` does the work:

- each unique op *signature* (kind, kernel, dims, dtype) is prepared and timed once; identical
  layers, and GEMMs of equal shape under different names, share the figure (the executed kernel
  does not depend on an Op's name for GEMMs and gathers, so their name is not part of it);
- a Cost per Op: seconds = median × count, FLOPs and bytes of the Op, kernels = count. A
  measurement has no compute/memory/overhead split and no ideal time: those fields are 0;
- with ``check_values`` (default) each prepared op is first run once with FTZ/DAZ *off* and its
  inputs and outputs go through ``values.check_finite_normal``: inf or NaN raise TstackError,
  subnormals in fp32/bf16 warn (the value calibrator should prevent both; FTZ would hide them);
- everything runs inside ``runtime.controlled(cfg)``; buffers of one signature are freed before
  the next is prepared, so peak memory is that of the largest op.

Warm-up and one measured iteration follow Demystifying BERT (002 §3.1.4): ``plan.warmup`` untimed
runs of each kernel, then ``plan.repeats`` timed samples, median reported; with ``plan.rounds`` > 1
the smallest median of the rounds (``timing.TimingPlan`` says why).
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from tstack.breakdown import Breakdown
from tstack.costmodel.cost import Cost
from tstack.errors import TstackError
from tstack.models import load_model
from tstack.profiler import opexec
from tstack.profiler.runtime import RuntimeConfig, controlled, describe, load_torch
from tstack.profiler.timing import Timing, TimingPlan, time_callable
from tstack.profiler.values import Problems, check_finite_normal
from tstack.spec import ModelSpec, RunSpec
from tstack.workload.build import build
from tstack.workload.op import Op

Signature = tuple[str, str, tuple[tuple[str, int], ...], str]
Progress = Callable[[int, int, Op], None]


def signature(op: Op) -> Signature:
    """What determines an Op's kernel and its time: kind, implementation (the kernel name; for GEMMs and
    gathers the kind and direction, not the layer or table name), dims, dtype."""
    return (op.kind, opexec.implementation_key(op), op.dims, op.dtype)


@dataclass(frozen=True)
class Measured:
    """Costs and Timings of a sequence of Ops, in order, with the runtime description.

    ``problems`` holds the value check of each Op (None when ``check_values`` was off);
    ``unique`` is the number of signatures measured.
    """

    ops: tuple[Op, ...]
    costs: tuple[Cost, ...]
    timings: tuple[Timing, ...]
    problems: tuple[Problems | None, ...]
    description: str
    unique: int


def _sync(cfg: RuntimeConfig) -> None:
    if cfg.device == "cuda":
        load_torch().cuda.synchronize()


def check_prepared(p: opexec.PreparedOp, cfg: RuntimeConfig) -> tuple[Problems, Problems]:
    """Run ``p`` once with FTZ/DAZ off and count inf/NaN/subnormal values in its inputs and outputs.

    Returns (all tensors, tensors other than fp16): fp16's narrow range makes a few subnormal
    outputs inherent to the format (see ``values``), so only the second count is held to zero.
    """
    torch = load_torch()
    with controlled(replace(cfg, flush_denormal=False)):
        p.run()
        _sync(cfg)
    tensors = {id(t): t for t in (*p.inputs.values(), *p.outputs.values())}.values()
    found = [(t.dtype == torch.float16, check_finite_normal(t)) for t in tensors]
    return sum((f for _, f in found), Problems()), sum((f for half, f in found if not half), Problems())


def _check(op: Op, found: Problems, strict: Problems) -> None:
    where = f"op {op.name!r} ({op.kind}, {dict(op.dims)}, {op.dtype})"
    if not found.finite:
        raise TstackError(f"{where} produced {found}: the value calibrator failed to keep it finite")
    if strict.subnormal:
        warnings.warn(f"{where} produced {strict} in fp32/bf16 tensors: calibration let subnormals through",
                      RuntimeWarning, stacklevel=3)


def _checked(op: Op, prepared: opexec.PreparedOp, cfg: RuntimeConfig) -> Problems:
    found, strict = check_prepared(prepared, cfg)
    _check(op, found, strict)
    return found


def measure_ops(ops: Iterable[Op], cfg: RuntimeConfig | None = None, plan: TimingPlan | None = None,
                progress: Progress | None = None, check_values: bool = True, seed: int = 0) -> Measured:
    """Time every Op (each unique signature once per round) on ``cfg``; see the module docstring.

    Round 1 runs the signatures in workload order, later rounds in a shuffled order each; an Op's
    Timing is that of its round with the smallest median (``timing.TimingPlan``). ``progress`` is called
    after each signature of each round with (done, rounds × signatures, op).
    """
    cfg, plan, ops = cfg or RuntimeConfig(), plan or TimingPlan(), tuple(ops)
    unique = list({signature(op): op for op in ops}.values())
    best: dict[Signature, Timing] = {}
    found: dict[Signature, Problems | None] = {}
    with controlled(cfg) as applied:
        description = describe(cfg, applied)
        for r in range(plan.rounds):
            order = unique if r == 0 else random.Random(seed + r).sample(unique, len(unique))
            for i, op in enumerate(order):
                sig = signature(op)
                prepared = opexec.prepare(op, cfg, seed)
                if sig not in found:
                    found[sig] = _checked(op, prepared, cfg) if check_values else None
                t = time_callable(prepared.run, cfg, warmup=plan.warmup, repeats=plan.repeats, min_time=plan.min_time)
                del prepared  # free this signature's buffers before the next is prepared
                if sig not in best or t.median < best[sig].median:
                    best[sig] = t
                if progress is not None:
                    progress(r * len(unique) + i + 1, plan.rounds * len(unique), op)
    timings = tuple(best[signature(op)] for op in ops)
    costs = tuple(Cost(seconds=t.median * op.count, flops=op.flops * op.count, bytes=op.bytes * op.count, kernels=op.count)
                  for op, t in zip(ops, timings))
    return Measured(ops=ops, costs=costs, timings=timings, problems=tuple(found[signature(op)] for op in ops),
                    description=description, unique=len(unique))


def measure(model: str | Path | ModelSpec, run: RunSpec | None = None, cfg: RuntimeConfig | None = None,
            plan: TimingPlan | None = None, progress: Progress | None = None, check_values: bool = True,
            seed: int = 0) -> Breakdown:
    """Measured Breakdown of one iteration: the Ops of ``workload.build(model, run)`` with measured Costs.

    The Breakdown's device is ``cfg.short_name`` (e.g. ``cpu-2t``); the Ops are those of the
    predicted Breakdown of the same (model, run), so labels match one to one.
    """
    spec = load_model(model)
    run = run or RunSpec(seq=spec.default_seq)
    cfg = cfg or RuntimeConfig()
    m = measure_ops(build(spec, run), cfg, plan, progress=progress, check_values=check_values, seed=seed)
    return Breakdown(model=spec, run=run, device=cfg.short_name, ops=m.ops, costs=m.costs)

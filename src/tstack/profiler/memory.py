"""Safety: estimate a run's peak memory before allocating it, and refuse what would not fit."""

from __future__ import annotations

from dataclasses import dataclass

from tstack.errors import TstackError
from tstack.report import units
from tstack.spec import ModelSpec, RunSpec
from tstack.workload.op import DTYPE_BYTES, Op
from tstack.workload.params import param_count

HEADROOM = 0.9  # refuse above this fraction of the available memory


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak bytes a measurement needs and what they consist of."""

    peak: float
    what: str


def per_op_peak(ops: tuple[Op, ...]) -> MemoryEstimate:
    """Measuring op by op holds one op's buffers at a time: its compulsory traffic bounds them."""
    biggest = max(ops, key=lambda op: op.bytes)
    return MemoryEstimate(float(biggest.bytes), f"the largest kernel's buffers ({biggest.name}, {units.si(biggest.bytes, 'B')})")


def whole_model_peak(model: ModelSpec, run: RunSpec, ops: tuple[Op, ...]) -> MemoryEstimate:
    """A whole model: weights (+ gradients and two optimizer states in training) + activations.

    Inference keeps one layer's activations live (bounded by the largest layer's forward
    traffic); training keeps every forward output for the backward pass.
    """
    params = param_count(model)
    weight_bytes = params * DTYPE_BYTES["fp32"] * (4 if run.training else 1)  # w (+ g, m, v)
    fwd = [op for op in ops if op.label("pass") == "fwd"]
    if run.training:
        acts = sum(op.bytes * op.count for op in fwd)
    else:
        per_layer: dict[str, int] = {}
        for op in fwd:
            per_layer[op.label("layer")] = per_layer.get(op.label("layer"), 0) + op.bytes
        acts = max(per_layer.values(), default=0)
    return MemoryEstimate(float(weight_bytes + acts), f"{units.si(weight_bytes, 'B')} of weights/states "
                                                      f"+ {units.si(acts, 'B')} of activations")


def available_bytes(device: str) -> float:
    """Memory available now: MemAvailable on the host, free memory on a CUDA device."""
    if device == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info()
        return float(free)
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    raise TstackError("cannot read MemAvailable from /proc/meminfo to check the run fits in memory")


def guard(estimate: MemoryEstimate, device: str, available: float | None = None,
          advice: str = "reduce --batch or --seq") -> None:
    """Raise a one-line error, before anything is allocated, when the estimate does not fit; ``advice`` names the
    options that shrink the run."""
    free = available_bytes(device) if available is None else available
    if estimate.peak > HEADROOM * free:
        raise TstackError(f"the run needs about {units.si(estimate.peak, 'B')} ({estimate.what}) but only "
                          f"{units.si(free, 'B')} of memory is available on {device}: {advice}")

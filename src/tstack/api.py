"""The Python API, mirroring the CLI: analyze one configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tstack.breakdown import Breakdown
from tstack.costmodel.backend import CostModel, Target, cost_workload, load_target, run_defaults
from tstack.models import load_model
from tstack.spec import ModelSpec, RunSpec
from tstack.workload.build import build
from tstack.workload.fusion import Profile, fuse

__all__ = ["CostModel", "analyze"]


def analyze(model: str | Path | ModelSpec, run: RunSpec | None = None, device: str | Path | Target = "a100",
            cost_model: CostModel | None = None, fusion: str | Path | Profile | None = None,
            **run_fields: Any) -> Breakdown:
    """Predicted Breakdown of one iteration, e.g. ``analyze("bert-large", mode="train", batch=32)``.

    ``device`` is any hardware target (tstack.costmodel.load_target): a device preset or file, or an accelerator
    preset or file (``analyze("bert-base", device="gemmini-ibert", seq=512)``: an int8 inference, with joules).
    ``run`` defaults to a RunSpec at the model's default sequence length (and the target's default precision and
    execution: int8 and a compiled graph on an accelerator); keyword arguments change its fields. The cost model
    defaults to the target's best (the systolic backend for an accelerator; calibrated tables when a device file has
    them; else the roofline).
    ``fusion`` applies a fusion profile (workload.fusion: none, apex, inductor, flash, or a .yaml file) first.
    """
    spec = load_model(model)
    target = load_target(device)
    if run is None:
        run_fields = {**run_defaults(target), **run_fields}
        run = RunSpec(seq=run_fields.pop("seq", spec.default_seq), **run_fields)
    elif run_fields:
        run = run.replace(**run_fields)
    ops = build(spec, run, device=target.name)
    if fusion is not None:
        ops = fuse(ops, fusion, target.name)
    ops, costs = cost_workload(ops, target, cost_model)
    return Breakdown(spec, run, target.name, ops, costs)

"""The Python API, mirroring the CLI: analyze one configuration."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tstack.breakdown import Breakdown
from tstack.costmodel.calibrated import for_device
from tstack.costmodel.cost import Cost
from tstack.hardware import DeviceSpec, load_device
from tstack.models import load_model
from tstack.spec import ModelSpec, RunSpec
from tstack.workload.build import build
from tstack.workload.op import Op

CostModel = Callable[[Op, DeviceSpec], Cost]


def analyze(model: str | Path | ModelSpec, run: RunSpec | None = None, device: str | Path | DeviceSpec = "a100",
            cost_model: CostModel | None = None, **run_fields: Any) -> Breakdown:
    """Predicted Breakdown of one iteration, e.g. ``analyze("bert-large", mode="train", batch=32)``.

    ``run`` defaults to a RunSpec at the model's default sequence length; keyword arguments
    change its fields. The cost model defaults to the device's best (calibrated tables when the
    device file has them, else the roofline).
    """
    spec = load_model(model)
    dev = load_device(device)
    if run is None:
        run = RunSpec(seq=run_fields.pop("seq", spec.default_seq), **run_fields)
    elif run_fields:
        run = run.replace(**run_fields)
    ops = build(spec, run)
    model_fn = cost_model or for_device(dev)
    return Breakdown(spec, run, dev.name, ops, tuple(model_fn(op, dev) for op in ops))

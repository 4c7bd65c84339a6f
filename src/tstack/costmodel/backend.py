"""Hardware targets and their cost-model backends: one name resolver, one dispatch, one way to cost a workload.

A target is any hardware description a cost model can price: a roofline DeviceSpec, a calibrated DeviceSpec (one
that carries measured tables), or a Gemmini-style AccelSpec. Every backend is a function (op, target) -> Cost of
all ``op.count`` instances; the next ones (multi-device, near-memory compute, FPGA) are siblings of that shape.
A backend whose costs depend on the neighbouring ops (the systolic one) also registers a whole-workload form in
WORKLOAD, which ``cost_workload`` uses; it may split an op into parts (Breakdown entries).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tstack.costmodel.calibrated import calibrated
from tstack.costmodel.cost import Cost
from tstack.costmodel.roofline import roofline
from tstack.costmodel.systolic import systolic, workload_entries
from tstack.errors import UnknownNameError
from tstack.hardware.accel import AccelSpec, accel_presets, load_accel
from tstack.hardware.device import DeviceSpec, device_presets, load_device
from tstack.loader import read_document, resolve_argument, show
from tstack.spec import preset_dir
from tstack.workload.op import Op

Target = DeviceSpec | AccelSpec
CostModel = Callable[[Op, Any], Cost]
Entries = tuple[tuple[Op, ...], tuple[Cost, ...]]
# backend -> its whole-workload form (ops, target) -> Breakdown entries
WORKLOAD: dict[CostModel, Callable[[tuple[Op, ...], Any], Entries]] = {systolic: workload_entries}
ACCEL_SECTIONS = ("mesh", "scratchpad", "accumulator")  # fields only an accelerator file has


def load_target(name_or_path: str | Path | Target) -> Target:
    """A hardware target by preset name (device or accelerator) or from a .yaml file whose fields say which it is
    (an accelerator file has mesh, scratchpad and accumulator sections; a device file has peak_flops)."""
    if isinstance(name_or_path, (DeviceSpec, AccelSpec)):
        return name_or_path
    devices, accels = device_presets(), accel_presets()
    if isinstance(name_or_path, str) and name_or_path in devices:
        return load_device(name_or_path)
    if isinstance(name_or_path, str) and name_or_path in accels:
        return load_accel(name_or_path)
    path = resolve_argument(name_or_path, "device", devices + accels, preset_dir("devices"))
    if path is None:
        raise UnknownNameError(f"unknown device {show(str(name_or_path), 40)} (device presets: {', '.join(devices)}; "
                               f"accelerator presets: {', '.join(accels)}; or give a path to a device or accelerator "
                               ".yaml file)")
    if path.parent == preset_dir("devices") and path.stem in accels:  # a path-like argument naming a preset
        return load_accel(path.stem)
    data = read_document(path, "device")
    if any(key in data for key in ACCEL_SECTIONS):
        return load_accel(path)
    return load_device(path)


def for_device(target: Target) -> CostModel:
    """The best backend for a target: systolic for an accelerator; calibrated when a device carries measured
    tables; else the roofline."""
    if isinstance(target, AccelSpec):
        return systolic
    return calibrated if target.calibration is not None else roofline


def default_precision(target: Target) -> str:
    """The precision a run on the target has when none is asked for (the accelerator computes int8)."""
    return "int8" if isinstance(target, AccelSpec) else "fp32"


def default_execution(target: Target) -> str:
    """How a run on the target executes when not asked: a GPU or CPU framework launches kernels one by one (eager);
    an accelerator runs a compiled graph."""
    return "graphs" if isinstance(target, AccelSpec) else "eager"


def run_defaults(target: Target, precision: str | None = None, execution: str | None = None) -> dict[str, str]:
    """The precision and execution of a run on the target: those asked for, else the target's defaults."""
    return {"precision": default_precision(target) if precision is None else precision,
            "execution": default_execution(target) if execution is None else execution}


def cost_workload(ops: Sequence[Op], target: Target, cost_model: CostModel | None = None) -> Entries:
    """The Breakdown entries (ops, costs) of a workload on a target, with the target's best backend by default.

    A backend with a whole-workload form costs the ops together (and may split one into parts); the others cost
    each op alone, one Cost per op.
    """
    model = cost_model or for_device(target)
    whole = WORKLOAD.get(model)
    if whole is not None:
        return whole(tuple(ops), target)
    return tuple(ops), tuple(model(op, target) for op in ops)

"""Calibrated cost model: kernel times from the device's measured tables, roofline where none applies.

(op, device) -> Cost, a sibling of roofline. The seconds come from the table of the op's
kernel interpolated at its sizes; the split into compute-, memory- and overhead-bound time
and the ideal time follow the roofline of the device's fitted peaks.
"""

from __future__ import annotations

from tstack.calibration import Calibration
from tstack.costmodel.cost import Cost
from tstack.costmodel.roofline import roofline
from tstack.hardware.device import DeviceSpec
from tstack.workload.labels import FUSED_ATTENTION
from tstack.workload.op import Op, OpKind


def table_lookup(op: Op, cal: Calibration) -> float | None:
    """Seconds of one instance from the calibration tables, or None when no table covers the op."""
    if op.is_gemm:
        if op.label("fusion") == FUSED_ATTENTION:
            return None  # a fused attention kernel is no plain batched GEMM: the B-GEMM tables do not time it
        M, N, K, batch = op.gemm_shape
        table = cal.tables.get(f"{op.kind}.{op.dtype}")
        if table is None:
            return None
        if op.kind == OpKind.GEMM:
            return table(M, N, K)
        return table(*(M, N, K, batch)[: len(table.axes)]) * batch  # per batch entry; older files have no batch axis
    if op.dtype != "fp32" and op.kind != OpKind.COPY:
        return None  # kernel tables are measured in fp32
    table = cal.tables.get("gather" if op.kind == OpKind.GATHER and op.label("pass") == "fwd" else op.name)
    if table is None:
        return None
    if len(table.axes) == 2:  # (elements, row length)
        return table(op.dim("rows") * op.dim("cols"), op.dim("cols")) if op.dim("rows") else None
    return table(op.dim("params")) if op.dim("params") else None


def calibrated(op: Op, dev: DeviceSpec) -> Cost:
    """Cost of all ``op.count`` instances from measured tables (roofline when the tables miss the op)."""
    base = roofline(op, dev)
    t = table_lookup(op, dev.calibration) if dev.calibration is not None else None
    if t is None:
        return base
    if not op.launch:  # the tables time kernels launched one by one; a graph replay does not pay the launch
        t = max(t - dev.launch_overhead, min(t, base.seconds / op.count))  # never below the roofline's busy time
    seconds = t * op.count
    f = seconds / base.seconds
    return Cost(seconds=seconds, flops=base.flops, bytes=base.bytes, compute_s=base.compute_s * f,
                memory_s=base.memory_s * f, overhead_s=base.overhead_s * f, ideal_s=base.ideal_s, kernels=base.kernels)

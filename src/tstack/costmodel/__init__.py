"""Cost models: pure functions (op, target) -> Cost, one per kind of hardware target (see backend)."""

from tstack.costmodel.backend import CostModel, Target, cost_workload, for_device, load_target
from tstack.costmodel.calibrated import calibrated
from tstack.costmodel.cost import Cost
from tstack.costmodel.roofline import roofline
from tstack.costmodel.systolic import systolic

__all__ = ["Cost", "CostModel", "Target", "calibrated", "cost_workload", "for_device", "load_target", "roofline",
           "systolic"]

"""Cost models: pure functions (op, device) -> Cost."""

from tstack.costmodel.calibrated import calibrated, for_device
from tstack.costmodel.cost import Cost
from tstack.costmodel.roofline import roofline

__all__ = ["Cost", "calibrated", "for_device", "roofline"]

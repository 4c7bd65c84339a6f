"""tstack: a full-stack performance lab for Transformer models."""

from tstack.api import analyze
from tstack.breakdown import Breakdown
from tstack.costmodel import Cost, roofline
from tstack.errors import SpecError, TstackError
from tstack.hardware.device import DeviceSpec, load_device
from tstack.models import load_model
from tstack.spec import ModelSpec, RunSpec
from tstack.sweep import sweep
from tstack.workload import Op, build

__all__ = ["Breakdown", "Cost", "DeviceSpec", "ModelSpec", "Op", "RunSpec", "SpecError", "TstackError", "analyze",
           "build", "load_device", "load_model", "roofline", "sweep"]
__version__ = "0.1.0"

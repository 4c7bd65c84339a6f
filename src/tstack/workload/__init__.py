"""The workload model: Op records and the builder from (ModelSpec, RunSpec)."""

from tstack.workload.build import Workload, build
from tstack.workload.op import Op

__all__ = ["Op", "Workload", "build"]

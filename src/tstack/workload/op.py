"""The one central record: an Op is a kernel a framework launches, with its shapes and costs.

FLOP convention (stated once, used everywhere):
- a multiply-add is 2 FLOPs, so an M×N×K GEMM is 2·M·N·K FLOPs per batch entry;
- every other arithmetic operation on one element (add, multiply, divide, max, compare)
  is 1 FLOP, and so is each transcendental (exp, erf, tanh, sqrt, rsqrt): counting them as
  one keeps FLOPs architecture-neutral; their real cost on a unit is a device property;
- a gather, copy or cast is 0 FLOPs.
Bytes are the compulsory traffic of the kernel: every input read once, every output
written once, at the storage dtype's width (no cache reuse across kernels).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum


class OpKind(str, Enum):
    """What a kernel does. A str: ``OpKind.GEMM == "gemm"``, and records, JSON and tables show the value."""

    GEMM = "gemm"  # C[M×N] = A[M×K]·B[K×N] (a Linear layer; dims M, N, K)
    BGEMM = "bgemm"  # ``batch`` independent GEMMs of one shape (attention scores and context)
    ELEMENTWISE = "elementwise"
    REDUCTION = "reduction"
    GATHER = "gather"  # a table lookup (embeddings) and, backward, its scatter-add
    COPY = "copy"  # a copy or cast

    __str__ = str.__str__
    __format__ = str.__format__


GEMM_KINDS = frozenset({OpKind.GEMM, OpKind.BGEMM})
# Every Op carries these labels, in this order (builders create them in this order).
LABEL_KEYS = ("part", "layer", "block", "group", "nlpfast", "pass")
DTYPE_BYTES = {"fp32": 4, "tf32": 4, "fp16": 2, "bf16": 2, "int8": 1, "int32": 4, "int64": 8, "bool": 1}


@dataclass(frozen=True, slots=True)
class Op:
    """One kernel: kind, name, dims, dtype, FLOPs and bytes per instance, labels, count.

    ``count`` is how many identical instances the workload runs (1 unless layers were
    collapsed for speed, see ``workload.build(collapse=True)``); totals multiply by it.
    ``launch`` is whether each instance pays a host launch (eager execution); under CUDA graphs or a
    compiled run the launches are replayed from the graph and amortized away.
    """

    kind: str
    name: str
    dims: tuple[tuple[str, int], ...]
    dtype: str
    flops: int
    bytes: int
    labels: tuple[tuple[str, str], ...]
    count: int = 1
    launch: bool = True

    def dim(self, key: str, default: int = 0) -> int:
        for k, v in self.dims:
            if k == key:
                return v
        return default

    def label(self, key: str) -> str:
        if key == "kind":
            return self.kind
        if key == "dtype":
            return self.dtype
        if key == "name":
            return self.name
        for k, v in self.labels:
            if k == key:
                return v
        return "-"

    @property
    def is_gemm(self) -> bool:
        """A GEMM or a batched GEMM."""
        return self.kind in GEMM_KINDS

    @property
    def intensity(self) -> float:
        """Arithmetic intensity in FLOP per byte."""
        return self.flops / self.bytes if self.bytes else float("inf")

    @property
    def gemm_shape(self) -> tuple[int, int, int, int]:
        """(M, N, K, batch) of a GEMM or batched GEMM; zeros for other kinds."""
        return self.dim("M"), self.dim("N"), self.dim("K"), self.dim("batch", 1 if self.dim("M") else 0)

    def relabel(self, **labels: str) -> Op:
        """A copy with some labels changed or added (order of keys kept)."""
        current = dict(self.labels)
        current.update(labels)
        return replace(self, labels=tuple(current.items()))

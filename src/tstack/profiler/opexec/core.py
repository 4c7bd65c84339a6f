"""The executor's core: PreparedOp, the builder registry, ``prepare`` and ``reference``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tstack.errors import TstackError
from tstack.profiler.runtime import RuntimeConfig, load_torch
from tstack.profiler.values import Draw, Values
from tstack.workload.fusion import FORWARD_PASSES
from tstack.workload.labels import FUSED_ATTENTION
from tstack.workload.op import Op, OpKind

SCALE = 0.125  # attention scale 1/√d_h for d_h = 64
DROPOUT_P = 0.1
EPS = 1e-5
LR = 1e-4
BETA1, BETA2, ADAM_EPS, WEIGHT_DECAY = 0.9, 0.999, 1e-6, 0.01
MOMENTUM = 0.9
INV_LOSS_SCALE = 2.0 ** -10


@dataclass(frozen=True)
class PreparedOp:
    """An Op ready to launch: ``run()`` is one launch of its kernel(s) on preallocated buffers.

    ``inputs`` and ``outputs`` name the buffers (in-place kernels list a tensor in both);
    ``output()`` is the main tensor the kernel writes.
    """

    op: Op
    run: Callable[[], Any]
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    primary: str
    scratch: dict[str, Any] = field(default_factory=dict)

    def output(self):
        return self.outputs[self.primary]


@dataclass
class BuildContext:
    """What an implementation builder gets: the Op, the torch module, the device, the torch dtype and the value source."""

    op: Op
    torch: Any
    device: Any
    dtype: Any
    draw: Draw

    @property
    def rows(self) -> int:
        return self.op.dim("rows")

    @property
    def cols(self) -> int:
        return self.op.dim("cols")

    @property
    def rc(self) -> tuple[int, int]:
        return self.rows, self.cols

    def empty(self, shape, dtype=None):
        return self.torch.empty(shape, dtype=dtype or self.dtype, device=self.device)


Builder = Callable[[BuildContext], PreparedOp]
Reference = Callable[[Op, Mapping[str, Any]], dict[str, Any]]
BUILDERS: dict[str, Builder] = {}
REFERENCES: dict[str, Reference] = {}
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "int8": "int8"}


def implements(*names: str, ref: Reference | None = None) -> Callable[[Builder], Builder]:
    """Register ``fn`` as the implementation of each name (and its float64 reference); a duplicate name raises."""

    def deco(fn: Builder) -> Builder:
        twice = sorted({n for n in names if n in BUILDERS or names.count(n) > 1})
        if twice:
            raise ValueError(f"implementation {', '.join(map(repr, twice))} is registered twice")
        for n in names:
            BUILDERS[n] = fn
            if ref is not None:
                REFERENCES[n] = ref
        return fn

    return deco


def implementation_key(op: Op) -> str:
    """The key of the implementation that runs an Op: the rule and direction of a fused attention kernel, the kind
    of other GEMMs and of gathers, else its name."""
    if op.label("fusion") == FUSED_ATTENTION:  # forward and backward share dims and dtype, not their kernel
        return FUSED_ATTENTION if op.label("pass") in FORWARD_PASSES else f"{FUSED_ATTENTION}-bwd"
    if op.is_gemm:
        return op.kind
    if op.kind == OpKind.GATHER:  # a lookup is 0 FLOPs (op.py); its backward adds each row into the table gradient
        return "gather-bwd" if op.flops else "gather"
    return op.name


def has_implementation(name: str) -> bool:
    return name in BUILDERS


def prepare(op: Op, cfg: RuntimeConfig, seed: int = 0, values: Values | None = None,
            draw: Draw | None = None) -> PreparedOp:
    """Allocate calibrated inputs, outputs and scratch for ``op`` on ``cfg.device``; nothing runs yet.

    ``draw`` (default: a fresh ``Draw(seed, device, values)``) supplies the random inputs.
    """
    torch = load_torch()
    key = implementation_key(op)
    builder = BUILDERS.get(key)
    if builder is None:
        raise TstackError(f"kernel {op.name!r} (kind {op.kind}) has no PyTorch implementation in tstack.profiler.opexec")
    if op.dtype not in DTYPES:
        raise TstackError(f"op {op.name!r}: dtype {op.dtype!r} is not one of {', '.join(DTYPES)}")
    if op.dtype == "int8" and not op.is_gemm:
        raise TstackError(f"op {op.name!r}: int8 is only implemented for GEMMs (kind {op.kind})")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise TstackError("device='cuda' but torch.cuda.is_available() is false")
    device = torch.device(cfg.device)
    ctx = BuildContext(op=op, torch=torch, device=device, dtype=getattr(torch, DTYPES[op.dtype]),
                       draw=draw or Draw(seed, device, values))
    return builder(ctx)


def reference(op: Op, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The outputs of ``op`` from explicit formulas in float64, keyed as ``PreparedOp.outputs``.

    ``inputs`` are the PreparedOp's inputs as they were before ``run()`` (in-place kernels change
    them); for dropout, the mask the kernel drew is ``inputs['mask']``.
    """
    key = implementation_key(op)
    fn = REFERENCES.get(key)
    if fn is None:
        raise TstackError(f"kernel {op.name!r} (kind {op.kind}) has no reference implementation")
    x = {k: v.detach().to("cpu", load_torch().float64) if v.is_floating_point() else v.detach().cpu() for k, v in inputs.items()}
    return fn(op, x)

"""Module scopes of a profiled step and the records built from them: kernels, attributions, labels, hooks."""


from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from tstack.breakdown import Breakdown
from tstack.spec import ModelSpec, RunSpec
from tstack.workload.labels import DR_RC_LN
from tstack.workload.op import GEMM_KINDS

SCOPE = "tstack.module::"
STEP = "tstack.step"

@dataclass(frozen=True, slots=True)
class Scope:
    """A module as a profiling scope: its path, class, layer ('L3' under index 3 of the repeated ModuleList) and its
    path below that layer ('' for the layer itself; the whole path outside layers)."""

    path: str
    cls: str
    layer: str = "-"
    local: str = ""


@dataclass(frozen=True, slots=True)
class Kernel:
    """One measured top-level aten call, with the shapes, FLOPs and bytes derived from its recorded inputs."""

    aten: str
    kind: str
    dims: tuple[tuple[str, int], ...]
    dtype: str
    flops: int
    bytes: int
    shapes: tuple[tuple[int, ...], ...]
    start_s: float  # from the start of its step
    seconds: float
    pass_: str = "fwd"  # fwd, bwd, recompute, update
    path: str | None = None  # innermost module scope; None outside every module
    seqs: frozenset[int] = frozenset()  # autograd sequence numbers of the forward ops inside it
    node: str = ""  # backward: the autograd node it runs in; update: the optimizer
    node_seq: int = -1
    thread: int = 0

    @property
    def is_gemm(self) -> bool:
        return self.kind in GEMM_KINDS


@dataclass(frozen=True, slots=True)
class Attribution:
    """Labels (part, layer, block, group, nlpfast) for a kernel; ``split`` > 1 gives it that share of a fused kernel."""

    name: str  # op name of the kernel when it is a GEMM or a lookup ('' or other kernels: the aten name)
    labels: Mapping[str, str]
    split: int = 1


Labeler = Callable[[Scope, Sequence["Kernel | Scope"]], list[tuple[Attribution, ...]]]


@dataclass(frozen=True, slots=True)
class KernelEvent:
    """A raw measured kernel of one profiled step with the labels it was attributed to (for traces)."""

    aten: str
    module: str
    start_s: float
    seconds: float
    thread: int
    op: str
    labels: tuple[tuple[str, str], ...]
    shapes: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class ModuleProfile:
    """Measured Breakdown of one step, the step's wall time without the profiler and what the ops leave unexplained.

    ``wall_s``: median of ``wall_runs`` (no profiler, no hooks). ``profiled_s``: median span of a step under the
    profiler. ``attributed_s``: the ops' seconds (per-op medians over the profiled steps), which the profiler inflates.
    """

    breakdown: Breakdown
    wall_s: float
    wall_runs: tuple[float, ...]
    profiled_s: float
    kernels: tuple[KernelEvent, ...]
    notes: tuple[str, ...] = ()

    @property
    def attributed_s(self) -> float:
        return self.breakdown.total.seconds

    @property
    def unattributed_s(self) -> float:
        """Wall time not inside any measured op (Python, hooks, framework); negative when profiling overhead on the
        ops exceeds it."""
        return self.wall_s - self.attributed_s

    @property
    def unattributed_profiled_s(self) -> float:
        """The same within the profiled steps themselves (≥ 0 up to noise)."""
        return self.profiled_s - self.attributed_s


@dataclass(frozen=True)
class Setup:
    """What a measured step is: the model and run it stands for (mode, precision, optimizer) and how to label it."""

    model: ModelSpec | None = None  # derived from the module (HF config) when None
    run: RunSpec | None = None  # inference at the inputs' batch × seq when None
    labeler: Labeler | None = None  # hfmodels.hf_labeler for HF models, else generic_labels


_BLOCK_WORDS = (("attention", ("attn", "attention")), ("fc", ("mlp", "ffn", "feed_forward", "feedforward",
                                                             "intermediate", "fc")),
                (DR_RC_LN, ("norm", "ln", "dropout")), ("embedding", ("embed", "wte", "wpe")),
                ("output", ("head", "pooler", "classifier", "lm_head")))


def generic_labels(scope: Scope, items: Sequence[Kernel | Scope]) -> list[tuple[Attribution, ...]]:
    """Labels of a module tstack knows nothing about: group = its class, nlpfast 'other', block from its name."""
    words = [w.lower() for w in scope.local.split(".") if w] + [scope.cls.lower()]
    block = next((b for b, keys in _BLOCK_WORDS if any(k in w for w in words for k in keys)), "other")
    labels = {"part": "transformer" if scope.layer != "-" else "other", "layer": scope.layer, "block": block,
              "group": scope.cls, "nlpfast": "other"}
    return [(Attribution("", labels),) for k in items if isinstance(k, Kernel)]


def fallback_attribution(group: str, block: str = "other") -> Attribution:
    return Attribution("", {"part": "other", "layer": "-", "block": block, "group": group, "nlpfast": "other"})


def scopes_of(module: torch.nn.Module) -> dict[str, Scope]:
    """Scope of every sub-module; layers are the entries of a ModuleList (or a Sequential of ≥ 2) of same-class modules.

    Layers are named L0, L1, ... when the model has one such list, else by the list's path (``decoder.layers.3``).
    """
    lists = [p for p, m in module.named_modules() if len({type(c) for c in m.children()}) == 1 and (
        isinstance(m, torch.nn.ModuleList) or isinstance(m, torch.nn.Sequential) and len(m) >= 2)]
    # Lists inside another list's entries (experts inside a layer) do not make layers of their own.
    repeated = [c for c in lists if not any(o != c and (o == "" or c.startswith(f"{o}.")) for o in lists)]
    out = {}
    for path, m in module.named_modules():
        layer, local = "-", path
        for container in repeated:
            prefix = f"{container}." if container else ""
            index, _, below = path[len(prefix):].partition(".") if path.startswith(prefix) else ("", "", "")
            if index.isdigit():
                layer, local = (f"L{index}" if len(repeated) == 1 else f"{prefix}{index}"), below
                break
        out[path] = Scope(path, type(m).__name__, layer, local)
    return out


@contextmanager
def scope_hooks(module: torch.nn.Module) -> Iterator[dict[str, Scope]]:
    """Forward hooks that open a record_function scope per module call for the duration of the block."""
    scopes = scopes_of(module)
    stack: list[tuple[torch.nn.Module, Any]] = []

    def enter(m: torch.nn.Module, path: str) -> None:
        rf = torch.profiler.record_function(SCOPE + path)
        rf.__enter__()
        stack.append((m, rf))

    def leave(m: torch.nn.Module) -> None:
        while stack:  # also closes scopes left open by a forward that raised
            top, rf = stack.pop()
            rf.__exit__(None, None, None)
            if top is m:
                return

    handles = []
    for path, m in module.named_modules():
        handles.append(m.register_forward_pre_hook(lambda mod, args, p=path: enter(mod, p)))
        handles.append(m.register_forward_hook(lambda mod, args, out: leave(mod), always_call=True))
    try:
        yield scopes
    finally:
        for h in handles:
            h.remove()

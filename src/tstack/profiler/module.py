"""Whole-model timing of any nn.Module with torch.profiler, measured kernels mapped back onto tstack's op labels.

One measured step (a forward, or forward + backward + optimizer step) is run ``repeats`` times under
torch.profiler with record_shapes. Forward hooks open a ``record_function`` scope per module call, named after the
module path, so each aten operator the module's Python code calls is attributed to its innermost module; backward
kernels inherit the labels of the forward operator whose autograd node they run (autograd sequence numbers), and
optimizer kernels get the optimizer's. A labeler turns (module scope, its kernels in order) into tstack labels
(see hfmodels.hf_labeler for BERT/GPT-2/LLaMA; ``generic_labels`` for anything else).

A kernel here is a top-level aten call (``aten::linear`` with the ``aten::addmm`` it runs inside): its seconds are
its CPU time including those nested calls (on CUDA: the device time of the GPU kernels it launched). Time in Python,
hooks and the framework between aten calls is not attributed to any op; ModuleProfile reports it.

Shapes, FLOPs and bytes come from the recorded input shapes: a GEMM's M×N×K in 002's convention (A[n, k]·B[k, m] is
M=m, N=n, K=k) and 2·M·N·K FLOPs (a fused SDPA kernel: its two products); other kernels a small per-element table
(formulas.py's counts) or 0, bytes as inputs read once plus one output the size of the largest input (0 for views).
"""

from __future__ import annotations

import math
import re
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from tstack.breakdown import Breakdown
from tstack.costmodel.cost import Cost
from tstack.errors import SpecError, TstackError
from tstack.spec import ModelSpec, RunSpec
from tstack.workload import formulas as F
from tstack.workload.op import Op

SCOPE = "tstack.module::"
STEP = "tstack.step"
_EVAL_FN = "autograd::engine::evaluate_function: "
_DTYPES = {"float": ("fp32", 4), "c10::Half": ("fp16", 2), "c10::BFloat16": ("bf16", 2), "double": ("fp64", 8),
           "long int": ("int64", 8), "int": ("int32", 4), "bool": ("bool", 1), "signed char": ("int8", 1),
           "unsigned char": ("uint8", 1)}
_GEMMS = {"aten::mm": "gemm", "aten::addmm": "gemm", "aten::_addmm_activation": "gemm", "aten::bmm": "bgemm",
          "aten::baddbmm": "bgemm"}
_GATHERS = {"aten::embedding", "aten::index_select", "aten::gather", "aten::index", "aten::take",
            "aten::embedding_backward", "aten::embedding_dense_backward"}
_REDUCTIONS = {"aten::sum", "aten::mean", "aten::softmax", "aten::_softmax", "aten::log_softmax", "aten::_log_softmax",
               "aten::layer_norm", "aten::native_layer_norm", "aten::native_layer_norm_backward", "aten::rms_norm",
               "aten::_fused_rms_norm", "aten::_softmax_backward_data", "aten::_log_softmax_backward_data",
               "aten::norm", "aten::linalg_vector_norm", "aten::max", "aten::amax", "aten::min", "aten::var",
               "aten::std", "aten::var_mean", "aten::argmax", "aten::logsumexp", "aten::cross_entropy_loss",
               "aten::nll_loss", "aten::nll_loss_nd", "aten::nll_loss_forward", "aten::nll_loss_backward"}
_SMALL_OUT = {"aten::sum", "aten::mean", "aten::norm", "aten::linalg_vector_norm", "aten::max", "aten::amax",
              "aten::min", "aten::var", "aten::std", "aten::var_mean", "aten::argmax", "aten::logsumexp",
              "aten::cross_entropy_loss", "aten::nll_loss", "aten::nll_loss_nd", "aten::nll_loss_forward"}
_LAYOUT = re.compile(r"^aten::(view|reshape|_unsafe_view|_reshape_alias|transpose|t|permute|expand|expand_as|unsqueeze|"
                     r"squeeze|slice|select|as_strided|split|split_with_sizes|chunk|narrow|detach|detach_|alias|unbind|"
                     r"contiguous|to|type_as|lift_fresh|flatten|unflatten|view_as|numpy_T|empty|empty_like|"
                     r"empty_strided|clone|copy_|_to_copy|cat|stack|repeat|zeros|zeros_like|ones|ones_like|full|"
                     r"new_zeros|new_empty|new_ones|fill_|zero_|resize_|arange)$")
_COPIES = {"aten::copy_", "aten::clone", "aten::_to_copy", "aten::cat", "aten::stack", "aten::repeat"}
# FLOPs per element of the non-GEMM kernels tstack also counts (formulas.py); GELU by erf: x/√2, erf, +1, ·x, ·½.
_FLOPS_PER_ELEMENT = {"aten::add": 1, "aten::add_": 1, "aten::sub": 1, "aten::rsub": 1, "aten::mul": 1, "aten::mul_": 1,
                      "aten::div": 1, "aten::div_": 1, "aten::neg": 1, "aten::pow": 1, "aten::rsqrt": 1,
                      "aten::sqrt": 1, "aten::exp": 1, "aten::tanh": 1, "aten::sin": 1, "aten::cos": 1, "aten::relu": 1,
                      "aten::silu": 4, "aten::gelu": 5, "aten::softmax": 5, "aten::_softmax": 5,
                      "aten::log_softmax": 5, "aten::layer_norm": 7, "aten::native_layer_norm": 7, "aten::mean": 1,
                      "aten::sum": 1, "aten::where": 1}
_OPTIMIZER_GROUP = {"Adam": "Adam", "AdamW": "Adam", "SGD": "SGD"}


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


# ---------------------------------------------------------------------------------------------------------------------
# Generic labels
# ---------------------------------------------------------------------------------------------------------------------
_BLOCK_WORDS = (("attention", ("attn", "attention")), ("fc", ("mlp", "ffn", "feed_forward", "feedforward",
                                                             "intermediate", "fc")),
                ("DR+RC+LN", ("norm", "ln", "dropout")), ("embedding", ("embed", "wte", "wpe")),
                ("output", ("head", "pooler", "classifier", "lm_head")))


def generic_labels(scope: Scope, items: Sequence[Kernel | Scope]) -> list[tuple[Attribution, ...]]:
    """Labels of a module tstack knows nothing about: group = its class, nlpfast 'other', block from its name."""
    words = [w.lower() for w in scope.local.split(".") if w] + [scope.cls.lower()]
    block = next((b for b, keys in _BLOCK_WORDS if any(k in w for w in words for k in keys)), "other")
    labels = {"part": "transformer" if scope.layer != "-" else "other", "layer": scope.layer, "block": block,
              "group": scope.cls, "nlpfast": "other"}
    return [(Attribution("", labels),) for k in items if isinstance(k, Kernel)]


def _fallback(group: str, block: str = "other") -> Attribution:
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


# ---------------------------------------------------------------------------------------------------------------------
# Kernels from profiler events
# ---------------------------------------------------------------------------------------------------------------------
def _subtree(ev: Any) -> Iterator[Any]:
    yield ev
    for c in ev.cpu_children:
        yield from _subtree(c)


def _tensors(ev: Any) -> list[tuple[tuple[int, ...], str, int]]:
    """(shape, tstack dtype, bytes per element) of each tensor input (fp32 assumed where torch records no dtypes)."""
    shapes = ev.input_shapes or ()
    dtypes = getattr(ev, "input_dtypes", None) or ["float" if s else "" for s in shapes]
    return [(tuple(int(d) for d in shape), *_DTYPES[dt]) for shape, dt in zip(shapes, dtypes)
            if dt in _DTYPES and isinstance(shape, (list, tuple))]


def _gemm_dims(ev: Any) -> tuple[int, int, int, int] | None:
    """(M, N, K, batch) of a matrix product in 002's convention: A[n, k] · B[k, m] is M=m, N=n, K=k."""
    shapes = [s for s in (ev.input_shapes or ()) if isinstance(s, (list, tuple)) and len(s) >= 2]
    if len(shapes) < 2:
        return None
    a, b = shapes[-2], shapes[-1]
    batch = a[0] if len(a) == 3 else 1
    return int(b[-1]), int(a[-2]), int(a[-1]), int(batch)


def classify(ev: Any) -> tuple[str, tuple[tuple[str, int], ...], str, int, int]:
    """(kind, dims, dtype, FLOPs, bytes) of a top-level aten call from its recorded input shapes and nested calls."""
    tensors = _tensors(ev)
    dtype, size = (tensors[0][1], tensors[0][2]) if tensors else ("fp32", 4)
    if ev.name.startswith(("aten::scaled_dot_product", "aten::_scaled_dot_product")) and len(tensors) >= 3:
        return _sdpa(tensors)
    inner = [e for e in _subtree(ev) if e.name in _GEMMS and _gemm_dims(e) is not None]
    gemms = [(_gemm_dims(e), _GEMMS[e.name]) for e in inner]
    if gemms:
        (M, N, K, batch), kind = gemms[0]
        operands = _tensors(inner[0])  # the product's own operands: under autocast, after the cast
        dtype, size = (operands[-1][1], operands[-1][2]) if operands else (dtype, size)
        flops = sum(2 * m * n * k * b for (m, n, k, b), _ in gemms)
        traffic = sum(F.gemm(m, n, k, b, size, size).bytes for (m, n, k, b), _ in gemms)
        dims = (("M", M), ("N", N), ("K", K), ("batch", batch)) + ((("gemms", len(gemms)),) if len(gemms) > 1 else ())
        return kind, dims, dtype, flops, traffic
    big = max(tensors, key=lambda t: math.prod(t[0]), default=((), dtype, size))
    elems = math.prod(big[0])
    rows, cols = (elems // big[0][-1], big[0][-1]) if big[0] and big[0][-1] else (elems, 1)
    name = ev.name
    if name in _GATHERS and len(tensors) >= 2:
        table, index = tensors[0], tensors[-1]
        rows, cols = math.prod(index[0]), table[0][-1] if table[0] else 1
        return "gather", (("rows", rows), ("cols", cols)), table[1], 0, F.gather(rows, cols, table[2]).bytes
    if _LAYOUT.match(name):
        copies = any(e.name in _COPIES for e in _subtree(ev))  # a real copy reads and writes the tensor; a view is free
        return "copy", (("rows", rows), ("cols", cols)), dtype, 0, 2 * elems * big[2] if copies else 0
    reads = sum(math.prod(t[0]) * t[2] for t in tensors)
    writes = 0 if name in _SMALL_OUT else elems * big[2]
    kind = "reduction" if name in _REDUCTIONS else "elementwise"
    flops = _FLOPS_PER_ELEMENT.get(name, 0) * elems
    if name == "aten::dropout" and any(e.name == "aten::bernoulli_" for e in _subtree(ev)):
        flops = 3 * elems  # rng draw, compare, scale-multiply (training only)
    return kind, (("rows", rows), ("cols", cols)), dtype, flops, reads + writes


def _sdpa(tensors: list[tuple[tuple[int, ...], str, int]]) -> tuple[str, tuple[tuple[str, int], ...], str, int, int]:
    """Fused attention (SDPA) q[..., Sq, d], k[..., Skv, d], v: its score and context products, dims of the score."""
    (q, dtype, size), (k, _, _), (v, _, _) = tensors[:3]
    Sq, d, Skv, dv, batch = q[-2], q[-1], k[-2], v[-1], math.prod(q[:-2])
    flops = 2 * batch * Sq * Skv * (d + dv)
    traffic = size * (math.prod(q) + math.prod(k) + math.prod(v) + batch * Sq * dv)
    return "bgemm", (("M", Skv), ("N", Sq), ("K", d), ("batch", batch), ("gemms", 2)), dtype, flops, traffic


def _is_kernel(ev: Any) -> bool:
    name = ev.name
    if getattr(ev, "is_user_annotation", False) or name.startswith(("autograd::", "torch::autograd::", "Optimizer.", "tstack.")):
        return False
    if "::" in name:
        return True
    if name.startswith(("cuda", "hip")):  # runtime API calls (the step's synchronize), not operators
        return False
    return not ev.cpu_children and not re.search(r"Backward\d*$", name)


@dataclass
class _Parse:
    """Kernels and module calls of one step, filled while walking its events (internal)."""

    scopes: dict[str, Scope]
    start_us: float
    cuda: bool
    span_s: float = 0.0
    kernels: list[Kernel] = field(default_factory=list)
    calls: list[tuple[Scope, list[Kernel | Scope]]] = field(default_factory=list)


def _walk(ev: Any, call: tuple[Scope, list] | None, ctx: tuple[str, str, int], acc: _Parse) -> None:
    name = ev.name
    if name.startswith(SCOPE):
        scope = acc.scopes.get(name[len(SCOPE):]) or Scope(name[len(SCOPE):], "?")
        child: tuple[Scope, list] = (scope, [])
        if call is not None:
            call[1].append(scope)
        acc.calls.append(child)
        ctx = ("recompute", *ctx[1:]) if ctx[0] == "bwd" else ctx  # forward hooks inside backward: checkpointing
        for c in ev.cpu_children:
            _walk(c, child, ctx, acc)
    elif name.startswith(_EVAL_FN):
        for c in ev.cpu_children:
            _walk(c, None, ("bwd", name[len(_EVAL_FN):].split("::")[-1], ev.sequence_nr), acc)
    elif name.startswith("Optimizer.step#") or name.startswith("Optimizer.zero_grad#"):
        opt = name.split("#", 1)[1].split(".", 1)[0]
        for c in ev.cpu_children:
            _walk(c, None, ("update", opt, -1), acc)
    elif _is_kernel(ev):
        kind, dims, dtype, flops, traffic = classify(ev)
        seconds = (ev.device_time_total if acc.cuda else ev.cpu_time_total) * 1e-6
        seqs = frozenset(e.sequence_nr for e in _subtree(ev) if e.sequence_nr >= 0) if ctx[0] != "bwd" else frozenset()
        k = Kernel(name, kind, dims, dtype, flops, traffic, tuple(s for s, _, _ in _tensors(ev)),
                   (ev.time_range.start - acc.start_us) * 1e-6, seconds, ctx[0], call[0].path if call else None, seqs,
                   ctx[1], ctx[2], ev.thread)
        acc.kernels.append(k)
        if call is not None:
            call[1].append(k)
    else:
        for c in ev.cpu_children:
            _walk(c, call, ctx, acc)


def parse_steps(events: Sequence[Any], scopes: dict[str, Scope], cuda: bool) -> list[_Parse]:
    """One _Parse per ``tstack.step`` range; events of other threads (CUDA autograd) join the step they start in."""
    steps = sorted((e for e in events if e.name == STEP and e.cpu_parent is None), key=lambda e: e.time_range.start)
    others = sorted((e for e in events if e.cpu_parent is None and e.name != STEP and e.device_type.name == "CPU"),
                    key=lambda e: e.time_range.start)
    out = []
    for s in steps:
        acc = _Parse(scopes, s.time_range.start, cuda, (s.time_range.end - s.time_range.start) * 1e-6)
        for c in s.cpu_children:
            _walk(c, None, ("fwd", "", -1), acc)
        for e in others:
            if s.time_range.start <= e.time_range.start <= s.time_range.end:
                _walk(e, None, ("fwd", "", -1), acc)
        acc.kernels.sort(key=lambda k: k.start_s)
        out.append(acc)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Labels and Ops
# ---------------------------------------------------------------------------------------------------------------------
def label_kernels(parse: _Parse, labeler: Labeler) -> list[tuple[tuple[Attribution, ...], str, int]]:
    """(attributions, pass, M of the forward kernel behind a backward one) of every kernel of a step, in kernel order.

    Forward kernels: the labeler's, per module call. Backward kernels: those of the forward kernel that created their
    autograd node; a GEMM's grad-weight product is the one reducing over the forward's tokens (N), the other its
    grad-act (B-GEMMs: first product grad-act, second grad-weight, as 002 Table 2b orders them); a bias-gradient sum is
    grad-weight. Optimizer kernels: part/block 'optimizer', pass 'update'.
    """
    fwd: dict[int, tuple[Attribution, ...]] = {}
    for scope, items in parse.calls:
        kernels = [k for k in items if isinstance(k, Kernel)]
        if kernels:
            attrs = labeler(scope, items)
            if len(attrs) != len(kernels):
                raise TstackError(f"labeler gave {len(attrs)} labels for the {len(kernels)} kernels of {scope.path!r}")
            fwd.update((id(k), a) for k, a in zip(kernels, attrs))
    by_seq = {s: k for k in parse.kernels if k.pass_ in ("fwd", "recompute") for s in k.seqs}
    gemms_in_node: dict[int, int] = {}
    out = []
    for k in parse.kernels:
        if k.pass_ in ("fwd", "recompute"):
            out.append((fwd.get(id(k), (_fallback("Outside modules"),)), k.pass_, 0))
        elif k.pass_ == "update":
            labels = {"part": "optimizer", "layer": "-", "block": "optimizer",
                      "group": _OPTIMIZER_GROUP.get(k.node, k.node), "nlpfast": "optimizer"}
            out.append(((Attribution("", labels),), "update", 0))
        else:
            origin = by_seq.get(k.node_seq) if k.node_seq >= 0 else None
            if origin is None:
                node = re.sub(r"Backward\d*$", "", k.node) or "Backward"
                out.append(((_fallback(node, "backward"),), "bwd-weight" if node == "AccumulateGrad" else "bwd-act", 0))
                continue
            order = gemms_in_node.get(k.node_seq, 0)
            if k.kind in ("gemm", "bgemm"):
                gemms_in_node[k.node_seq] = order + 1
            out.append((fwd.get(id(origin), (_fallback("Outside modules"),)), _bwd_pass(k, origin, order),
                        dict(origin.dims).get("M", 0)))
    return out


def _bwd_pass(k: Kernel, origin: Kernel, order: int) -> str:
    if k.kind == "gemm" and origin.kind == "gemm":
        K, fM, fN = dict(k.dims)["K"], dict(origin.dims)["M"], dict(origin.dims)["N"]
        if fM != fN and K in (fM, fN):
            return "bwd-weight" if K == fN else "bwd-act"
    if k.kind in ("gemm", "bgemm"):  # autograd computes the first operand's gradient first
        return "bwd-act" if order == 0 else "bwd-weight"
    if k.kind == "gather":  # the embedding table's gradient
        return "bwd-weight"
    return "bwd-weight" if k.aten == "aten::sum" and origin.kind == "gemm" else "bwd-act"


def _op(k: Kernel, a: Attribution, pass_: str, width: int = 0) -> Op:
    """The Op of a kernel's attribution; a fused GEMM's share has its fused dimension (``width``, the forward's M:
    M again in grad-weight, K in grad-act) divided by the split."""
    n, dims = a.split, k.dims
    if n > 1 and k.kind in ("gemm", "bgemm"):
        fused = next((d for d in ("M", "K", "N") if dict(dims).get(d) == (width or dict(dims)["M"])), "M")
        dims = tuple((d, v // n if d == fused else v) for d, v in dims)
    keys = ("part", "layer", "block", "group", "nlpfast")
    labels = tuple((key, a.labels.get(key, "-")) for key in keys) + (("pass", pass_),)
    name = a.name if a.name and k.kind in ("gemm", "bgemm", "gather") else k.aten
    return Op(k.kind, name, dims, k.dtype, k.flops // n, k.bytes // n, labels)


def _reference(parses: list[_Parse]) -> tuple[_Parse, list[float], str | None]:
    """The step whose kernels become ops, with per-kernel medians over the steps when they all ran the same kernels."""
    def sig(p: _Parse) -> list[tuple]:
        return [(k.aten, k.shapes, k.pass_) for k in p.kernels]

    ref = parses[0]
    if all(sig(p) == sig(ref) for p in parses[1:]):
        return ref, [statistics.median(p.kernels[i].seconds for p in parses) for i in range(len(ref.kernels))], None
    totals = [sum(k.seconds for k in p.kernels) for p in parses]
    ref = parses[sorted(range(len(parses)), key=totals.__getitem__)[len(parses) // 2]]
    return ref, [k.seconds for k in ref.kernels], ("the profiled steps ran different kernels; ops come from the step with "
                                                   "the median total time")


# ---------------------------------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------------------------------
def _split_inputs(inputs: Any) -> tuple[tuple, dict[str, Any]]:
    if isinstance(inputs, Mapping):
        return (), dict(inputs)
    if isinstance(inputs, torch.Tensor):
        return (inputs,), {}
    return tuple(inputs), {}


def _loss(out: Any) -> torch.Tensor:
    """The model's own loss when it returns one (HF with labels), else the mean of its first tensor output."""
    loss = getattr(out, "loss", None)
    if isinstance(loss, torch.Tensor):
        return loss
    t = out
    while not isinstance(t, torch.Tensor):
        values = list(t.values()) if isinstance(t, Mapping) else list(t) if isinstance(t, (tuple, list)) else []
        t = next((v for v in values if v is not None), None)
        if t is None:
            raise TstackError(f"training needs a tensor output to differentiate; the module returned {type(out).__name__}")
    return t.float().mean()


def _optimizer(module: torch.nn.Module, run: RunSpec) -> tuple[torch.optim.Optimizer | None, str | None]:
    params = [p for p in module.parameters() if p.requires_grad]
    if run.optimizer == "adam":
        return torch.optim.Adam(params, lr=1e-4), None
    if run.optimizer == "sgd":
        return torch.optim.SGD(params, lr=1e-4, momentum=0.9), None
    return None, (f"torch has no {run.optimizer.upper()} optimizer: the measured training step covers forward + backward "
                  "only (optimizer=adam or sgd adds an optimizer step)")


def _autocast(precision: str, device: torch.device) -> Any:
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    if precision in ("fp16-mixed", "bf16-mixed"):
        return torch.autocast(device.type, dtype=torch.float16 if precision == "fp16-mixed" else torch.bfloat16)
    raise TstackError(f"precision={precision!r} cannot be measured on a whole nn.Module (fp32, fp16-mixed, bf16-mixed)")


def _step_fn(module: torch.nn.Module, inputs: Any, run: RunSpec, device: torch.device) -> tuple[Callable[[], None], str | None]:
    """One measured step: the forward (no_grad) for inference; forward, backward and optimizer step for training."""
    args, kwargs = _split_inputs(inputs)
    cuda = device.type == "cuda"
    optimizer, note = _optimizer(module, run) if run.training else (None, None)

    def step() -> None:
        with _autocast(run.precision, device), torch.set_grad_enabled(run.training):
            out = module(*args, **kwargs)
        if run.training:
            _loss(out).backward()
            if optimizer is not None:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            else:
                module.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize(device)

    return step, note


def _first_tensor(inputs: Any) -> torch.Tensor | None:
    args, kwargs = _split_inputs(inputs)
    return next((v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor) and v.dim() >= 1), None)


def _spec_of(module: torch.nn.Module) -> ModelSpec:
    """The module's ModelSpec from its HF config when tstack can read it, else a named placeholder."""
    from tstack.hfconfig import from_hf_config

    cfg = getattr(module, "config", None)
    if cfg is not None and hasattr(cfg, "to_dict"):
        try:
            return from_hf_config(cfg.to_dict(), type(module).__name__, f"config of {type(module).__name__}")
        except (SpecError, TypeError, ValueError):
            pass
    return ModelSpec(name=type(module).__name__, arch="encoder", layers=1, hidden=1, heads=1, ffn=1, vocab=1, head="none",
                     description="a measured nn.Module; its shape fields are unknown (placeholders)")


def _device(module: torch.nn.Module) -> torch.device:
    t = next(module.parameters(), None)
    if t is None:
        t = next(module.buffers(), None)
    return t.device if t is not None else torch.device("cpu")


def profile_module(module: torch.nn.Module, inputs: Any, threads: int | None = None, warmup: int = 2, repeats: int = 5,
                   setup: Setup | None = None) -> ModuleProfile:
    """Time one step of ``module`` on ``inputs`` (kwargs mapping, args tuple or one tensor) and attribute its kernels.

    Steps: warm-up; ``repeats`` timed steps without the profiler (wall time); ``repeats`` steps under torch.profiler
    with module scopes; kernels of each step parsed and labelled; per-kernel medians become the Breakdown's ops.
    Training (``setup.run.mode == 'train'``) updates the module's weights.
    """
    if repeats < 1 or warmup < 0:
        raise TstackError(f"repeats={repeats} must be ≥ 1 and warmup={warmup} ≥ 0")
    setup = setup or Setup()
    first = _first_tensor(inputs)
    shape = tuple(first.shape) if first is not None else (1, 1)
    run = setup.run or RunSpec(batch=max(1, shape[0]), seq=max(1, shape[1] if len(shape) > 1 else 1))
    model = setup.model or _spec_of(module)
    labeler = setup.labeler
    if labeler is None:
        from tstack.profiler.hfmodels import hf_labeler

        labeler = hf_labeler(module) or generic_labels
    device = _device(module)
    old_threads, was_training = torch.get_num_threads(), module.training
    try:
        if threads:
            torch.set_num_threads(threads)
        module.train(run.training)
        step, note = _step_fn(module, inputs, run, device)
        runs = _timed(step, warmup, repeats)
        parses = _profiled(module, step, repeats, device)
        name = f"cpu-{torch.get_num_threads()}t"  # as RuntimeConfig.short_name names devices
        if device.type == "cuda":
            name = "cuda-" + "-".join(torch.cuda.get_device_name(device).lower().replace("nvidia ", "").split())
    finally:
        torch.set_num_threads(old_threads)
        module.train(was_training)
    return _result(parses, labeler, (model, run, name), tuple(runs), note)


def _timed(step: Callable[[], None], warmup: int, repeats: int) -> list[float]:
    """Seconds of ``repeats`` steps after ``warmup`` untimed ones; a step that raises ends in one line."""
    runs = []
    try:
        for _ in range(warmup):
            step()
        for _ in range(repeats):
            t0 = time.perf_counter()
            step()
            runs.append(time.perf_counter() - t0)
    except (RuntimeError, TypeError, ValueError, IndexError, KeyError, AttributeError) as e:
        raise TstackError(f"the measured step failed: {type(e).__name__}: {' '.join(str(e).split())}") from e
    return runs


def _profiled(module: torch.nn.Module, step: Callable[[], None], repeats: int, device: torch.device) -> list[_Parse]:
    from torch.profiler import ProfilerActivity, profile, record_function

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with scope_hooks(module) as scopes:
        step()  # a first step with hooks, outside the profile
        with profile(activities=activities, record_shapes=True) as prof:
            for _ in range(repeats):
                with record_function(STEP):
                    step()
    parses = parse_steps(prof.events(), scopes, cuda)
    if not parses:
        raise TstackError("the profiler recorded no step (is another profiler active?)")
    return parses


def _result(parses: list[_Parse], labeler: Labeler, what: tuple[ModelSpec, RunSpec, str], runs: tuple[float, ...],
            note: str | None) -> ModuleProfile:
    ref, seconds, mismatch = _reference(parses)
    labelled = label_kernels(ref, labeler)
    ops, costs, events = [], [], []
    for k, s, (attrs, pass_, width) in zip(ref.kernels, seconds, labelled):
        for a in attrs:
            op = _op(k, a, pass_, width)
            ops.append(op)
            costs.append(Cost(seconds=s / a.split, flops=op.flops, bytes=op.bytes, kernels=1))
        first = _op(k, attrs[0], pass_, width)
        events.append(KernelEvent(k.aten, k.path if k.path is not None else "-", k.start_s, k.seconds, k.thread,
                                  first.name, first.labels, k.shapes))
    spans = [p.span_s for p in parses]
    model, run, device = what
    return ModuleProfile(Breakdown(model, run, device, tuple(ops), tuple(costs)), statistics.median(runs), runs,
                         statistics.median(spans), tuple(events), tuple(n for n in (note, mismatch) if n))


def profile_preset(spec: ModelSpec, run: RunSpec, threads: int | None = None, warmup: int = 2, repeats: int = 5,
                   seed: int = 0, device: str = "cpu") -> ModuleProfile:
    """Build the HF model of ``spec`` (random weights) and profile one ``run`` step on random token ids in range.

    Inference runs the forward (decoders score the last token only, as tstack's LM head does; BERT gets an attention
    mask with one padded position, so the mask kernel runs); training runs forward, backward (HF loss: MLM + NSP, or LM) and the
    optimizer step (Adam or SGD; LAMB is not in torch: forward + backward only, said in the notes).
    """
    from tstack.profiler.hfmodels import accepts, build_hf_model, hf_labeler
    from tstack.workload.build import check_pair

    check_pair(spec, run)
    if run.phase == "decode":
        raise TstackError("phase=decode cannot be profiled on a whole model yet; profile phase=prefill")
    if run.checkpoint not in ("none", "every-1"):
        raise TstackError(f"checkpoint={run.checkpoint!r}: HF models checkpoint every layer; use checkpoint=every-1 or none")
    model = build_hf_model(spec, seed, training=run.training, dropout=run.dropout).to(device)
    if run.checkpoint == "every-1":
        (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, spec.vocab, (run.batch, run.seq), generator=g).to(device)
    kwargs: dict[str, Any] = {"input_ids": ids}
    if spec.arch == "encoder":  # one padded position, as in padded pretraining batches: HF skips an all-ones mask
        mask = torch.ones_like(ids)
        mask[-1, -1] = 0 if run.seq > 1 else 1
        kwargs["attention_mask"] = mask
    if accepts(model, "use_cache"):
        kwargs["use_cache"] = False
    if run.training and accepts(model, "next_sentence_label"):
        kwargs.update(labels=ids, next_sentence_label=torch.zeros(run.batch, dtype=torch.long, device=ids.device))
    elif run.training and accepts(model, "labels"):
        kwargs["labels"] = ids
    elif not run.training:
        keep = next((k for k in ("logits_to_keep", "num_logits_to_keep") if accepts(model, k)), None)
        if keep:
            kwargs[keep] = 1
    return profile_module(model, kwargs, threads, warmup, repeats, Setup(spec, run, hf_labeler(model)))

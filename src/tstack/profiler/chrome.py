"""Import a Chrome trace that torch.profiler recorded (CPU or CUDA, on any machine) as a measured Breakdown.

The trace is read as JSON (no torch needed). One iteration is picked: the ``ProfilerStep#N`` window PyTorch marks
(the last one by default), or the whole trace when it marks none. Its matrix products are the top-level
``aten::mm / addmm / bmm / baddbmm`` CPU ops (one nested inside another is the same product) with their
``Input Dims``: A[n, k] · B[k, m] is the M=m, N=n, K=k GEMM of 002's convention, batched by A's first dimension.
A fused attention call is a product too: ``aten::scaled_dot_product_attention`` (forward) and the
``aten::_scaled_dot_product_…_backward`` kernels, with q[…, Sq, d] and k[…, Skv, d] (after the backward's
grad_out) as the M=Skv, N=Sq, K=d product batched by q's leading dimensions; it counts the FLOPs PyTorch's
FlopCounterMode gives it (two products forward; five backward, the scores recomputed) and maps onto tstack's fused
attention kernel (``attn.sdpa``, ``--attention sdpa``).
Each is timed by the GPU kernels it launched (matched on ``External id``) in a CUDA trace, else by its CPU duration,
and carries the innermost ``nn.Module`` scope it ran in (``with_modules=True``) or record_function annotation.

Mapping onto tstack's ops: the trace's products in time order are matched to the predicted workload's GEMMs in
op order, each to the first unmatched GEMM of the same M×K whose N·batch is the same (eager grouped-query attention
repeats K/V per query head: batch B·h of N=Sq where tstack has B·hk of N=Sq·group, the same product) and, when
the trace carries module scopes, in the layer its attention module (``…Attention_k``) belongs to; each measured
product takes the labels of the predicted op it matched.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tstack.breakdown import Breakdown
from tstack.costmodel.cost import Cost
from tstack.errors import SpecError
from tstack.spec import ModelSpec, RunSpec
from tstack.workload.build import build
from tstack.workload.op import LABEL_KEYS, Op, OpKind

GEMM_NAMES = frozenset({"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_addmm_activation"})
SDPA_FORWARD = "aten::scaled_dot_product_attention"
_SDPA_BACKWARD = re.compile(r"^aten::_scaled_dot_product_\w*attention\w*_backward$")
_STEP = re.compile(r"^ProfilerStep#(\d+)$")
_MODULE = "nn.Module: "
US = 1e-6


@dataclass(frozen=True)
class TraceGemm:
    """One matrix product of the trace: its aten name, 002 shape, measured seconds and scope."""

    aten: str
    M: int
    N: int
    K: int
    batch: int
    seconds: float
    start_us: float
    module: str
    products: int = 1  # a fused attention call: 2 forward, 5 backward

    @property
    def flops(self) -> int:
        return 2 * self.M * self.N * self.K * self.batch * self.products


@dataclass(frozen=True)
class TraceImport:
    """The products of one traced iteration, matched onto a predicted workload."""

    step: str
    step_seconds: float
    cuda: bool
    gemms: tuple[TraceGemm, ...]
    matched: tuple[tuple[TraceGemm, Op], ...]  # in trace order
    unmatched: tuple[TraceGemm, ...]  # trace products no predicted GEMM takes
    missing: tuple[Op, ...]  # predicted GEMM instances the trace does not have
    measured: Breakdown  # the matched ops (predicted order) with their measured costs

    def records(self) -> list[dict[str, Any]]:
        out = []
        for g, op in self.matched:
            out.append({"kind": op.kind, "name": op.name, **dict(op.labels), "dtype": op.dtype, "M": g.M, "N": g.N,
                        "K": g.K, "gemm_batch": g.batch, "count": 1, "flops": g.flops, "bytes": op.bytes,
                        "seconds": g.seconds, "aten": g.aten, "module": g.module, "matched": True})
        for g in self.unmatched:
            kind = OpKind.BGEMM if g.aten.endswith("bmm") or g.products > 1 else OpKind.GEMM
            out.append({"kind": kind.value, "name": "-",
                        **dict.fromkeys(LABEL_KEYS, "-"), "dtype": "-",
                        "M": g.M, "N": g.N, "K": g.K, "gemm_batch": g.batch, "count": 1, "flops": g.flops,
                        "bytes": None, "seconds": g.seconds, "aten": g.aten, "module": g.module, "matched": False})
        return out


def load_events(path: str | Path) -> list[dict[str, Any]]:
    """The complete ("X") events of a Chrome trace file; a SpecError naming the file when it is not one."""
    where = f"trace {str(path)[:200]!r}"
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SpecError([f"cannot be read as a Chrome trace JSON file ({type(e).__name__}: {str(e)[:120]})"],
                        where) from None
    events = data.get("traceEvents") if isinstance(data, dict) else data
    if not isinstance(events, list):
        raise SpecError(["has no traceEvents list (a torch.profiler export_chrome_trace file has one)"], where)
    return [e for e in events if isinstance(e, dict) and e.get("ph") == "X" and isinstance(e.get("ts"), (int, float))
            and isinstance(e.get("dur"), (int, float))]


def steps(events: list[dict[str, Any]]) -> list[tuple[int, float, float]]:
    """(N, start µs, end µs) of each ``ProfilerStep#N`` window, in order: the CPU-side annotation (a CUDA trace
    repeats each on the GPU's timeline as a ``gpu_user_annotation``, which spans only the step's kernels)."""
    out = []
    for e in events:
        if e.get("cat") == "gpu_user_annotation":
            continue
        m = _STEP.match(str(e.get("name", "")))
        if m:
            out.append((int(m.group(1)), float(e["ts"]), float(e["ts"]) + float(e["dur"])))
    return sorted(out)


def _window(events: list[dict[str, Any]], step: int | None) -> tuple[str, float, float]:
    marked = steps(events)
    if step is not None:
        for n, a, b in marked:
            if n == step:
                return f"ProfilerStep#{n}", a, b
        have = ", ".join(str(n) for n, _, _ in marked) or "none"
        raise SpecError([f"--step={step} is not in the trace (ProfilerStep numbers: {have})"])
    if marked:
        n, a, b = marked[-1]
        return f"ProfilerStep#{n}", a, b
    cpu = [e for e in events if e.get("cat") == "cpu_op"]
    if not cpu:
        raise SpecError(["the trace has no cpu_op events: record it with torch.profiler (ProfilerActivity.CPU)"])
    return "whole trace", min(e["ts"] for e in cpu), max(e["ts"] + e["dur"] for e in cpu)


def attention_products(name: str) -> int:
    """Products of a fused attention call as FlopCounterMode counts them: 2 forward (QKᵀ, P·V), 5 backward (QKᵀ
    recomputed, dV, dP, dQ, dK); 0 for any other op."""
    if name == SDPA_FORWARD:
        return 2
    return 5 if _SDPA_BACKWARD.match(name) else 0


def _product(name: str) -> int:
    """Products one call of this op does: 1 for a GEMM, a fused attention call's, else 0."""
    return 1 if name in GEMM_NAMES else attention_products(name)


def _is_matrix(s: Any) -> bool:
    return isinstance(s, list) and len(s) >= 2 and all(isinstance(d, int) for d in s)


def _dims(shapes: Any, products: int = 1) -> tuple[int, int, int, int] | None:
    if not isinstance(shapes, list):
        return None
    if products > 1:  # fused attention: (grad_out,) q, k, v, ...
        q, k = shapes[products == 5:][:2] if len(shapes) >= 3 else (None, None)
        if not (_is_matrix(q) and _is_matrix(k)):
            return None
        return k[-2], q[-2], q[-1], math.prod(q[:-2])
    mats = [s for s in shapes if _is_matrix(s)]
    if len(mats) < 2:
        return None
    a, b = mats[-2], mats[-1]
    return b[-1], a[-2], a[-1], a[0] if len(a) == 3 else 1


def _inside(e: dict[str, Any], a: float, b: float) -> bool:
    return a <= e["ts"] and e["ts"] + e["dur"] <= b


def _innermost_scope(e: dict[str, Any], scopes: list[dict[str, Any]]) -> str:
    best, best_dur = "-", float("inf")
    for s in scopes:
        if s.get("tid") == e.get("tid") and _inside(e, s["ts"], s["ts"] + s["dur"]) and s["dur"] < best_dur:
            best, best_dur = str(s["name"]).removeprefix(_MODULE), s["dur"]
    return best


def trace_gemms(events: list[dict[str, Any]], step: int | None = None) -> tuple[str, float, bool, list[TraceGemm]]:
    """(step name, step seconds, whether GPU kernels time the products, the products in time order)."""
    name, a, b = _window(events, step)
    inside = [e for e in events if _inside(e, a, b)]
    kernel_us: dict[Any, float] = {}
    for e in events:
        if e.get("cat") == "kernel":
            ext = (e.get("args") or {}).get("External id")
            kernel_us[ext] = kernel_us.get(ext, 0.0) + float(e["dur"])
    cuda = bool(kernel_us)
    gemm_events = sorted((e for e in inside if e.get("cat") == "cpu_op" and _product(str(e.get("name", "")))),
                         key=lambda e: (e["ts"], -e["dur"]))
    scopes = [e for e in inside if (e.get("cat") == "python_function" and str(e.get("name", "")).startswith(_MODULE))
              or (e.get("cat") == "user_annotation" and not _STEP.match(str(e.get("name", ""))))]
    out: list[TraceGemm] = []
    outer_end: dict[Any, float] = {}  # per thread, the end of its last outer product (in start order, disjoint)
    for e in gemm_events:
        if e["ts"] + e["dur"] <= outer_end.get(e.get("tid"), -math.inf):
            continue  # a product nested in another (addmm calling mm, attention calling its kernel) is the same
        products = _product(str(e["name"]))
        dims = _dims((e.get("args") or {}).get("Input Dims"), products)
        if dims is None:
            continue
        outer_end[e.get("tid")] = e["ts"] + e["dur"]
        ext = (e.get("args") or {}).get("External id")
        seconds = kernel_us.get(ext, 0.0) * US if cuda else float(e["dur"]) * US
        out.append(TraceGemm(str(e["name"]), *dims, seconds=seconds, start_us=float(e["ts"]),
                             module=_innermost_scope(e, scopes), products=products))
    return name, (b - a) * US, cuda, out


def _instances(ops: tuple[Op, ...]) -> list[Op]:
    return [op for op in ops if op.is_gemm for _ in range(op.count)]


_ATTN_SCOPE = re.compile(r"Attention_(\d+)$")  # the k-th attention module instance runs in layer k
_LAYER = re.compile(r"^[LED](\d+)$")


def _same_layer(g: TraceGemm, op: Op) -> bool:
    """When the trace names the attention module a product ran in, the op's layer is that module's."""
    scope, layer = _ATTN_SCOPE.search(g.module), _LAYER.match(op.label("layer"))
    return scope is None or layer is None or scope.group(1) == layer.group(1)


def match(gemms: list[TraceGemm], inst: list[Op]) -> tuple[list[tuple[TraceGemm, int]], list[TraceGemm], list[int]]:
    """Each trace product to the first unmatched predicted GEMM instance (index into ``inst``, the
    ``_instances`` of the workload) of its shape; returns (matched pairs, unmatched products, indices of predicted
    instances left over)."""
    pending: dict[tuple[int, int, int], list[int]] = {}  # by product (M, K, N·batch), in op order
    for i, op in enumerate(inst):
        M, N, K, batch = op.gemm_shape
        pending.setdefault((M, K, N * batch), []).append(i)
    pairs, unmatched = [], []
    for g in gemms:
        candidates = pending.get((g.M, g.K, g.N * g.batch), [])
        at = next((j for j, i in enumerate(candidates) if _same_layer(g, inst[i])), None)
        if at is None:
            unmatched.append(g)
        else:
            pairs.append((g, candidates.pop(at)))
    return pairs, unmatched, sorted(i for left in pending.values() for i in left)


def import_trace(path: str | Path, model: ModelSpec, run: RunSpec, step: int | None = None,
                 device: str = "") -> TraceImport:
    """The traced iteration's products matched onto ``build(model, run, device=device)`` and its measured Breakdown
    (``device``: the preset the ops are predicted on, for the on-chip tiles of a fused attention kernel)."""
    events = load_events(path)
    name, step_s, cuda, gemms = trace_gemms(events, step)
    ops = build(model, run, device=device)
    inst = _instances(ops)
    pairs, unmatched, pending = match(gemms, inst)
    by_index = sorted(pairs, key=lambda p: p[1])
    measured_ops = tuple(replace(inst[i], count=1) for _, i in by_index)  # one measured instance each
    costs = tuple(Cost(seconds=g.seconds, flops=g.flops, bytes=inst[i].bytes, kernels=1) for g, i in by_index)
    measured = Breakdown(model, run, "trace" + (" (cuda)" if cuda else " (cpu)"), measured_ops, costs)
    return TraceImport(step=name, step_seconds=step_s, cuda=cuda, gemms=tuple(gemms),
                       matched=tuple((g, inst[i]) for g, i in pairs), unmatched=tuple(unmatched),
                       missing=tuple(inst[i] for i in pending), measured=measured)

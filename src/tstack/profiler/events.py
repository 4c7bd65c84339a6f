"""torch.profiler events -> tstack kernels (kind, dims, FLOPs, bytes) -> labelled Ops."""


from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from tstack.errors import TstackError
from tstack.profiler.chrome import attention_products
from tstack.profiler.scopes import SCOPE, STEP, Attribution, Kernel, Labeler, Scope, fallback_attribution
from tstack.workload import formulas as F
from tstack.workload.op import Op, OpKind

_EVAL_FN = "autograd::engine::evaluate_function: "
_DTYPES = {"float": ("fp32", 4), "c10::Half": ("fp16", 2), "c10::BFloat16": ("bf16", 2), "double": ("fp64", 8),
           "long int": ("int64", 8), "int": ("int32", 4), "bool": ("bool", 1), "signed char": ("int8", 1),
           "unsigned char": ("uint8", 1)}
_GEMMS = {"aten::mm": OpKind.GEMM, "aten::addmm": OpKind.GEMM, "aten::_addmm_activation": OpKind.GEMM,
          "aten::bmm": OpKind.BGEMM, "aten::baddbmm": OpKind.BGEMM}
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
OPTIMIZER_GROUP = {"Adam": "Adam", "AdamW": "Adam", "SGD": "SGD"}
_FLOPS_PER_ELEMENT = {"aten::add": 1, "aten::add_": 1, "aten::sub": 1, "aten::rsub": 1, "aten::mul": 1, "aten::mul_": 1,
                      "aten::div": 1, "aten::div_": 1, "aten::neg": 1, "aten::pow": 1, "aten::rsqrt": 1,
                      "aten::sqrt": 1, "aten::exp": 1, "aten::tanh": 1, "aten::sin": 1, "aten::cos": 1, "aten::relu": 1,
                      "aten::silu": 4, "aten::gelu": 5, "aten::softmax": 5, "aten::_softmax": 5,
                      "aten::log_softmax": 5, "aten::layer_norm": 7, "aten::native_layer_norm": 7, "aten::mean": 1,
                      "aten::sum": 1, "aten::where": 1}


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
    products = attention_products(ev.name)
    if products and len(tensors) >= 3 + (products == 5):
        return _sdpa(tensors[products == 5:], products)  # a backward kernel's inputs start with grad_out
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
        return OpKind.GATHER, (("rows", rows), ("cols", cols)), table[1], 0, F.gather(rows, cols, table[2]).bytes
    if _LAYOUT.match(name):
        copies = any(e.name in _COPIES for e in _subtree(ev))  # a real copy reads and writes the tensor; a view is free
        return OpKind.COPY, (("rows", rows), ("cols", cols)), dtype, 0, 2 * elems * big[2] if copies else 0
    reads = sum(math.prod(t[0]) * t[2] for t in tensors)
    writes = 0 if name in _SMALL_OUT else elems * big[2]
    kind = "reduction" if name in _REDUCTIONS else "elementwise"
    flops = _FLOPS_PER_ELEMENT.get(name, 0) * elems
    if name == "aten::dropout" and any(e.name == "aten::bernoulli_" for e in _subtree(ev)):
        flops = 3 * elems  # rng draw, compare, scale-multiply (training only)
    return kind, (("rows", rows), ("cols", cols)), dtype, flops, reads + writes


def _sdpa(tensors: list[tuple[tuple[int, ...], str, int]], products: int
          ) -> tuple[str, tuple[tuple[str, int], ...], str, int, int]:
    """Fused attention (SDPA) q[..., Sq, d], k[..., Skv, d], v: its ``products`` (2 forward, 5 backward) of the
    score's size, dims of the score; traffic reads q, k, v and writes the output (forward) or reads them again with
    the output gradient and writes their gradients (backward)."""
    (q, dtype, size), (k, _, _), (v, _, _) = tensors[:3]
    Sq, d, Skv, batch = q[-2], q[-1], k[-2], math.prod(q[:-2])
    flops = products * 2 * batch * Sq * Skv * d
    qkv = math.prod(q) + math.prod(k) + math.prod(v)
    traffic = size * (qkv + math.prod(q) if products == 2 else 2 * qkv + 2 * math.prod(q))
    return OpKind.BGEMM, (("M", Skv), ("N", Sq), ("K", d), ("batch", batch), ("gemms", products)), dtype, flops, traffic


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
class StepParse:
    """Kernels and module calls of one step, filled while walking its events (internal)."""

    scopes: dict[str, Scope]
    start_us: float
    cuda: bool
    span_s: float = 0.0
    kernels: list[Kernel] = field(default_factory=list)
    calls: list[tuple[Scope, list[Kernel | Scope]]] = field(default_factory=list)


def _walk(ev: Any, call: tuple[Scope, list] | None, ctx: tuple[str, str, int], acc: StepParse) -> None:
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
        k = Kernel(aten=name, kind=kind, dims=dims, dtype=dtype, flops=flops, bytes=traffic,
                   shapes=tuple(s for s, _, _ in _tensors(ev)), start_s=(ev.time_range.start - acc.start_us) * 1e-6,
                   seconds=seconds, pass_=ctx[0], path=call[0].path if call else None, seqs=seqs, node=ctx[1],
                   node_seq=ctx[2], thread=ev.thread)
        acc.kernels.append(k)
        if call is not None:
            call[1].append(k)
    else:
        for c in ev.cpu_children:
            _walk(c, call, ctx, acc)


def parse_steps(events: Sequence[Any], scopes: dict[str, Scope], cuda: bool) -> list[StepParse]:
    """One StepParse per ``tstack.step`` range; events of other threads (CUDA autograd) join the step they start in."""
    steps = sorted((e for e in events if e.name == STEP and e.cpu_parent is None), key=lambda e: e.time_range.start)
    others = sorted((e for e in events if e.cpu_parent is None and e.name != STEP and e.device_type.name == "CPU"),
                    key=lambda e: e.time_range.start)
    out = []
    for s in steps:
        acc = StepParse(scopes, s.time_range.start, cuda, (s.time_range.end - s.time_range.start) * 1e-6)
        for c in s.cpu_children:
            _walk(c, None, ("fwd", "", -1), acc)
        for e in others:
            if s.time_range.start <= e.time_range.start <= s.time_range.end:
                _walk(e, None, ("fwd", "", -1), acc)
        acc.kernels.sort(key=lambda k: k.start_s)
        out.append(acc)
    return out


def label_kernels(parse: StepParse, labeler: Labeler) -> list[tuple[tuple[Attribution, ...], str, int]]:
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
            out.append((fwd.get(id(k), (fallback_attribution("Outside modules"),)), k.pass_, 0))
        elif k.pass_ == "update":
            labels = {"part": "optimizer", "layer": "-", "block": "optimizer",
                      "group": OPTIMIZER_GROUP.get(k.node, k.node), "nlpfast": "optimizer"}
            out.append(((Attribution("", labels),), "update", 0))
        else:
            origin = by_seq.get(k.node_seq) if k.node_seq >= 0 else None
            if origin is None:
                node = re.sub(r"Backward\d*$", "", k.node) or "Backward"
                pass_ = "bwd-weight" if node == "AccumulateGrad" else "bwd-act"
                out.append(((fallback_attribution(node, "backward"),), pass_, 0))
                continue
            order = gemms_in_node.get(k.node_seq, 0)
            if k.is_gemm:
                gemms_in_node[k.node_seq] = order + 1
            out.append((fwd.get(id(origin), (fallback_attribution("Outside modules"),)), _bwd_pass(k, origin, order),
                        dict(origin.dims).get("M", 0)))
    return out


def _bwd_pass(k: Kernel, origin: Kernel, order: int) -> str:
    if k.kind == OpKind.GEMM and origin.kind == OpKind.GEMM:
        K, fM, fN = dict(k.dims)["K"], dict(origin.dims)["M"], dict(origin.dims)["N"]
        if fM != fN and K in (fM, fN):
            return "bwd-weight" if K == fN else "bwd-act"
    if k.is_gemm:  # autograd computes the first operand's gradient first
        return "bwd-act" if order == 0 else "bwd-weight"
    if k.kind == OpKind.GATHER:  # the embedding table's gradient
        return "bwd-weight"
    return "bwd-weight" if k.aten == "aten::sum" and origin.kind == OpKind.GEMM else "bwd-act"


def kernel_op(k: Kernel, a: Attribution, pass_: str, width: int = 0) -> Op:
    """The Op of a kernel's attribution; a fused GEMM's share has its fused dimension (``width``, the forward's M:
    M again in grad-weight, K in grad-act) divided by the split."""
    n, dims = a.split, k.dims
    if n > 1 and k.is_gemm:
        fused = next((d for d in ("M", "K", "N") if dict(dims).get(d) == (width or dict(dims)["M"])), "M")
        dims = tuple((d, v // n if d == fused else v) for d, v in dims)
    keys = ("part", "layer", "block", "group", "nlpfast")
    labels = tuple((key, a.labels.get(key, "-")) for key in keys) + (("pass", pass_),)
    if "fusion" in a.labels:  # a fused kernel names its rule, as the workload's fused ops do
        labels += (("fusion", a.labels["fusion"]),)
    name = a.name if a.name and (k.is_gemm or k.kind == OpKind.GATHER) else k.aten
    return Op(kind=k.kind, name=name, dims=dims, dtype=k.dtype, flops=k.flops // n, bytes=k.bytes // n, labels=labels)


def reference_step(parses: list[StepParse]) -> tuple[StepParse, list[float], str | None]:
    """The step whose kernels become ops, with per-kernel medians over the steps when they all ran the same kernels."""
    def sig(p: StepParse) -> list[tuple]:
        return [(k.aten, k.shapes, k.pass_) for k in p.kernels]

    ref = parses[0]
    if all(sig(p) == sig(ref) for p in parses[1:]):
        return ref, [statistics.median(p.kernels[i].seconds for p in parses) for i in range(len(ref.kernels))], None
    totals = [sum(k.seconds for k in p.kernels) for p in parses]
    ref = parses[sorted(range(len(parses)), key=totals.__getitem__)[len(parses) // 2]]
    return ref, [k.seconds for k in ref.kernels], ("the profiled steps ran different kernels; ops come from the step with "
                                                   "the median total time")

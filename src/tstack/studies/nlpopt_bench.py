"""Timing and working set of the NLP-Opt variants of one layer (003 §VI-B, Fig. 10 and Table III), as records.

A case is one layer of a 003 Table IV base model at random weights (seeded): the BERT encoder layer (GELU), the
Transformer encoder and decoder layers (ReLU), or the memory network (all its hops). Every variant is a deep copy of
the same module, so all see the same weights and inputs:

- ``sdpa``: the reference with PyTorch's fused ``F.scaled_dot_product_attention`` as its attention core;
- ``base``: the reference (explicit QKᵀ, softmax, PV);
- ``P``, ``PC``, ``PCF`` (any of ``partition.VARIANTS``): holistic partitioning by ``partition(model, plan)``;
- ``PCF+ZS``: ``optimize(model, mp=True, zs=True, params)``: zero-skipping attention and the FFN split.

A variant that does not apply to a case (zero skipping of a decoder or of a memory network; P of a one-head
memory network is the baseline) is recorded with a note instead of a time.
"""

from __future__ import annotations

import copy
import gc
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from tstack.errors import SpecError, TstackError
from tstack.kernels.api import Params, optimize, partition
from tstack.kernels.partition import VARIANTS, ffn_block, l2_bytes
from tstack.kernels.reference import DecoderLayer, EncoderLayer, MemoryNetwork, causal_mask
from tstack.models import load_model
from tstack.profiler.memory import MemoryEstimate
from tstack.profiler.runtime import RuntimeConfig
from tstack.profiler.timing import Timing, time_callable
from tstack.report import units
from tstack.spec import ModelSpec
from tstack.studies.workingset import peak_intermediate_bytes

MODELS = {"bert": "nlpfast-bert", "transformer": "nlpfast-transformer", "memnet": "memnet"}
BENCH_VARIANTS = ("sdpa", *VARIANTS, "PCF+ZS")
MEMNET_QUERIES = 32  # questions per batch element (n_q); the memory size is the sequence length


@dataclass(frozen=True)
class Case:
    """One module to time and its inputs."""

    model: str
    part: str
    seq: int
    batch: int
    module: nn.Module
    inputs: tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class BenchRow:
    """One variant of one case: time (None where it does not apply), peak intermediate bytes of the layer and of its
    attention block alone (byte), max |output − base output|."""

    model: str
    part: str
    seq: int
    batch: int
    variant: str
    timing: Timing | None
    peak_bytes: int | None
    attention_peak_bytes: int | None
    max_abs_err: float | None
    note: str = ""


def case_count(model: str) -> int:
    """Cases ``build_cases`` makes for ``model``: the Transformer's encoder and decoder layers, one layer otherwise."""
    return 2 if model == "transformer" else 1


def memory_estimate(model: str, seq: int, batch: int, variants: int, spec: ModelSpec | None = None) -> MemoryEstimate:
    """Peak bytes of ``run_case`` on the cases of ``model`` at (batch, seq), before anything is allocated.

    fp32 throughout: ``variants`` + 1 copies of the weights (every variant is a deep copy of the case's module),
    the inputs and the base output, and one call's intermediates of the reference, whose attention holds the whole
    (B, h, S, S) score and probability tensors (a decoder's cross attention as well).
    """
    spec = spec or load_model(MODELS[model])
    h, f = spec.hidden, spec.ffn
    if model == "memnet":
        weights = h * h + h * spec.vocab
        acts = 3 * batch * seq * h + 3 * batch * MEMNET_QUERIES * (seq + h + spec.vocab)
    else:
        attention = 2 * batch * spec.heads * seq * seq + 5 * batch * seq * h  # scores, probabilities; q, k, v, ctx, out
        cases = case_count(model)
        weights = cases * (4 * h * h + 2 * h * f) + (4 * h * h if model == "transformer" else 0)  # + cross attention
        acts = 3 * batch * seq * h + cases * attention + 2 * batch * seq * f
    peak = 4.0 * (weights * (variants + 1) + acts)
    return MemoryEstimate(peak, f"{variants + 1} copies of {units.si(4.0 * weights, 'B')} of weights and "
                                f"{units.si(4.0 * acts, 'B')} of inputs and intermediates at batch {batch}, S={seq}")


def build_cases(model: str, seq: int, batch: int = 1, seed: int = 0, spec: ModelSpec | None = None) -> list[Case]:
    """The layer(s) of a Table IV base model (or of ``spec``, same kind) at random weights, random inputs of (batch, seq)."""
    if model not in MODELS:
        raise SpecError([f"model={model!r} is not one of {', '.join(MODELS)}"], "opt bench")
    spec = spec or load_model(MODELS[model])
    g = torch.Generator().manual_seed(seed)
    if model == "memnet":
        net = MemoryNetwork.from_spec(spec, seed)
        u = torch.randn(batch, MEMNET_QUERIES, spec.hidden, generator=g)
        mem_in, mem_out = (torch.randn(batch, seq, spec.hidden, generator=g) for _ in range(2))
        return [Case(model=model, part=f"{spec.hops} hops, n_q={MEMNET_QUERIES}", seq=seq, batch=batch, module=net,
                     inputs=(u, mem_in, mem_out))]
    x = torch.randn(batch, seq, spec.hidden, generator=g)
    if model == "bert":
        return [Case(model=model, part="encoder layer", seq=seq, batch=batch, module=EncoderLayer.from_spec(spec, seed),
                     inputs=(x,))]
    memory = torch.randn(batch, seq, spec.hidden, generator=g)
    return [Case(model=model, part="encoder layer", seq=seq, batch=batch, module=EncoderLayer.from_spec(spec, seed),
                 inputs=(x,)),
            Case(model=model, part="decoder layer", seq=seq, batch=batch, module=DecoderLayer.from_spec(spec, seed + 1),
                 inputs=(x, memory))]


def block_sizes(case: Case, params: Params) -> str:
    """The blocks the partitioned variants of ``case`` run with: ``params``' sizes, or the L2 rule's where None."""
    if isinstance(case.module, MemoryNetwork):
        u = case.inputs[0]
        _, chunk = params.plan("PC").attention_blocks(1, u.shape[-1], u.shape[1], case.seq)
        return f"C: {chunk} of {case.seq} memory slots per chunk"
    sa, s_q = case.module.attention.self, case.seq
    heads, d = sa.num_attention_heads, sa.attention_head_size
    group, _ = params.plan("P").attention_blocks(heads, d, s_q, s_q)
    pc_group, chunk = params.plan("PC").attention_blocks(heads, d, s_q, s_q)
    d_ff = case.module.intermediate.dense.out_features
    width = ffn_block(params.ffn_blocks, case.batch * s_q, d_ff)
    return (f"P: {group} of {heads} heads per group; PC: {pc_group} heads × {chunk} of {s_q} keys per step; "
            f"F: {width} of {d_ff} d_FF columns per block (L2 {l2_bytes() >> 10} KiB)")


def variant_module(case: Case, variant: str, params: Params) -> nn.Module:
    """A deep copy of the case's module turned into ``variant``; TstackError where the variant does not apply."""
    if variant not in BENCH_VARIANTS:
        raise SpecError([f"variant={variant!r} is not one of {', '.join(BENCH_VARIANTS)}"], "opt bench")
    module = copy.deepcopy(case.module).eval()
    if variant == "sdpa":
        for m in module.modules():
            if hasattr(m, "sdpa"):
                m.sdpa = True
        return module
    if variant == "PCF+ZS":
        return optimize(module, mp=True, zs=True, params=_as_dict(params))
    if variant != "base":
        if isinstance(module, MemoryNetwork) and variant == "P":
            raise TstackError("one head: partial-head update is the baseline")
        partition(module, params.plan(variant))
    return module


def _as_dict(params: Params) -> dict[str, object]:
    return {k: getattr(params, k) for k in params.__dataclass_fields__}


def _attention_call(case: Case, module: nn.Module) -> Callable[[], object]:
    """One call of the variant's attention block alone (its working set, 003 Table III's attention columns)."""
    if isinstance(module, MemoryNetwork):
        u, mem_in, mem_out = case.inputs
        return lambda: module.attention(u, mem_in, mem_out)
    x = case.inputs[0]
    mask = causal_mask(x.shape[1], x.dtype) if isinstance(module, DecoderLayer) else None
    return lambda: module.attention(x, mask)


def time_interleaved(calls: dict[str, Callable[[], object]], cfg: RuntimeConfig, repeats: int,
                     progress: Callable[[int], None] | None = None) -> dict[str, Timing]:
    """Median of ``repeats`` samples per call, taken round-robin so that a load change on a shared machine hits all alike.

    Python's cyclic garbage collector is off while timing, as in ``timeit``: a full collection of this process's
    objects (up to ~0.1 s after building and tracking the modules) lands in whichever call happens to trigger it,
    more often in the variants that make more Python objects per call. ``progress(1)`` follows every sample.
    """
    for fn in calls.values():
        fn()  # warm-up
    samples: dict[str, list[float]] = {k: [] for k in calls}
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            for name, fn in calls.items():
                samples[name].append(time_callable(fn, cfg, warmup=0, repeats=1).median)
                if progress is not None:
                    progress(1)
    finally:
        if enabled:
            gc.enable()
    return {name: Timing.of(v) for name, v in samples.items()}


def run_case(case: Case, variants: list[str], params: Params, cfg: RuntimeConfig, repeats: int = 5,
             progress: Callable[[int], None] | None = None) -> list[BenchRow]:
    """Time the variants of ``case`` round-robin (median of ``repeats``), with peak intermediate bytes and error vs base.

    The caller applies ``controlled(cfg)``. ``progress(n)`` counts timed samples: ``repeats`` per variant (a variant
    that does not apply counts its ``repeats`` at once).
    """
    with torch.no_grad():
        expected = case.module(*case.inputs)
        modules: dict[str, nn.Module] = {}
        notes: dict[str, str] = {}
        for variant in variants:
            try:
                modules[variant] = variant_module(case, variant, params)
            except TstackError as e:
                notes[variant] = str(e)
        if progress is not None and notes:
            progress(repeats * len(notes))
        calls = {v: (lambda m=m: m(*case.inputs)) for v, m in modules.items()}
        errors = {v: float((fn() - expected).abs().max()) for v, fn in calls.items()}
        peaks = {v: (peak_intermediate_bytes(fn).peak, peak_intermediate_bytes(_attention_call(case, modules[v])).peak)
                 for v, fn in calls.items()}
        timings = time_interleaved(calls, cfg, repeats, progress)
    return [BenchRow(case.model, case.part, case.seq, case.batch, v, timings.get(v), *peaks.get(v, (None, None)),
                errors.get(v), notes.get(v, "")) for v in variants]


def record(row: BenchRow, rows: list[BenchRow]) -> dict[str, object]:
    """``row`` as an output record: unit-named fields, and its median over the base's and SDPA's of the same case."""
    refs = {r.variant: r.timing for r in rows if (r.model, r.part, r.seq, r.batch) == (row.model, row.part, row.seq,
                                                                                          row.batch)}
    t = row.timing

    def ratio(ref: str) -> float | None:
        base = refs.get(ref)
        return t.median / base.median if t is not None and base is not None and base.median > 0 else None

    return {"model": row.model, "part": row.part, "seq": row.seq, "batch": row.batch, "variant": row.variant,
            "median_seconds": t.median if t else None, "p10_seconds": t.p10 if t else None,
            "p90_seconds": t.p90 if t else None, "repeats": t.repeats if t else None,
            "ratio_to_base": ratio("base"), "ratio_to_sdpa": ratio("sdpa"), "peak_bytes": row.peak_bytes,
            "attention_peak_bytes": row.attention_peak_bytes, "max_abs_error": row.max_abs_err, "note": row.note}

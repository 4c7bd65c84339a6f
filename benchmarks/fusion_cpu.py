"""Predicted vs measured speed-up of each fusion rule on this CPU.

    chrt -f 20 python benchmarks/fusion_cpu.py [--threads 1] [--rounds 3] [--repeats 10] [--tokens 1024]

Measured: ``kernels.fused`` cases (unfused op by op vs fused: inductor-compiled chains, F.layer_norm, fused Adam,
concatenated Q/K/V GEMMs, the CPU flash attention kernel), timed by ``profiler.fusion`` (runtime.controlled:
fixed threads, FTZ; warm-up, adaptive batching, median of --repeats, smallest median of --rounds alternating
passes; under runtime.MALLOC_POLICY), values compared, kernels counted with torch.profiler.

Per layer: one BERT encoder layer's inference forward (kernels.reference), eager against torch.compile, next to
the workload's layer under profile none and under inductor (without Q/K/V concatenation, which the reference
layer's three Linear modules do not get).

Predicted: the same kernels as tstack Ops (workload formulas, workload.fusion's rules, the Fig. 12 decompositions
of studies.repro_002_fusion) costed by the roofline on a host device built from three micro-benchmarks run here
and printed: a streaming add's bandwidth at the cases' sizes, one tiny op's dispatch time (the launch overhead),
and a 1024³ GEMM's FLOP/s (the CPU's vector units do both GEMMs and element-wise work: one peak for both).
A benchmark: it prints, it asserts nothing but the values' agreement. The load average is printed next to the
figures: on a shared machine they are noisy.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time


def host_device(threads: int, elems: int):
    """A DeviceSpec of this CPU from micro-benchmarks (bandwidth at ``elems`` fp32 elements per operand)."""
    import torch

    from tstack.hardware.device import Efficiency, load_device
    from tstack.profiler.runtime import RuntimeConfig, controlled
    from tstack.profiler.timing import time_callable

    cfg = RuntimeConfig(threads=threads)
    a, b, c = torch.randn(elems), torch.randn(elems), torch.empty(elems)
    x, y, z = torch.randn(1), torch.randn(1), torch.empty(1)
    m1, m2, m3 = torch.randn(1024, 1024), torch.randn(1024, 1024), torch.empty(1024, 1024)
    with controlled(cfg):
        add = time_callable(lambda: torch.add(a, b, out=c), cfg, warmup=3, repeats=20).median
        tiny = time_callable(lambda: torch.add(x, y, out=z), cfg, warmup=3, repeats=20).median
        mm = time_callable(lambda: torch.mm(m1, m2, out=m3), cfg, warmup=2, repeats=5).median
    bandwidth = 3 * 4 * elems / max(add - tiny, 1e-9)
    peak = 2 * 1024**3 / mm
    base = load_device("xeon-gold-5220-2s")
    dev = dataclasses.replace(
        base, name="this-cpu", compute_units=threads, memory_bandwidth=bandwidth, launch_overhead=tiny,
        peak_flops={"matrix": {"fp32": peak}, "vector": {"fp32": peak}},
        efficiency=Efficiency(tile_m=96, tile_n=96, k_half=1.0, matrix_max=1.0, vector_max=1.0, memory_max=1.0,
                              bytes_half=1.0), sources=("micro-benchmarks of benchmarks/fusion_cpu.py",))
    return dev, {"bandwidth_bytes_per_second": bandwidth, "launch_seconds": tiny, "gemm_flop_per_second": peak}


def predicted_ops(rule: str, tokens: int, hidden: int, heads: int, seq: int, layers: int, vocab: int, l2: int):
    """(unfused, fused) tstack Ops of one rule at the case's shapes (fp32, no training copies)."""
    from tstack.kernels.fused import bert_adam_shapes
    from tstack.models import load_model
    from tstack.spec import RunSpec
    from tstack.studies.repro_002_fusion import adam_ops, layernorm_ops, qkv_ops
    from tstack.workload import formulas as F
    from tstack.workload.build import build
    from tstack.workload.fusion import Attention, fuse_attention, fuse_chains, load_profile
    from tstack.workload.op import Op, OpKind

    def op(name: str, rows: int, cols: int, counts=None, kind=OpKind.ELEMENTWISE) -> Op:
        c = counts or F.pointwise(name, rows, cols, 4, 4)
        return Op(kind=F.kernel(name).kind if counts is None else kind, name=name, dims=c.dims, dtype="fp32",
                  flops=c.flops, bytes=c.bytes, labels=(("layer", "L0"), ("part", "bench"), ("pass", "fwd")))

    chains = {c.name: c for c in load_profile("inductor").chains}
    if rule == "scale-mask-softmax-dropout":
        rows = tokens // seq * heads * seq
        unfused = [op(n, rows, seq) for n in ("scale", "mask", "softmax", "dropout")]
        return unfused, list(fuse_chains(tuple(unfused), (chains[rule],), False))
    if rule == "dropout-residual-layernorm":
        unfused = [op(n, tokens, hidden) for n in ("dropout", "residual", "layernorm")]
        return unfused, list(fuse_chains(tuple(unfused), (chains[rule],), False))
    if rule == "bias-gelu":
        E, C = tokens * 4 * hidden, 4 * hidden
        bias = F.Counts(E, 2 * E * 4 + C * 4, (("rows", tokens), ("cols", C)))  # x + b: read x and b, write
        gelu = F.Counts(5 * E, 2 * E * 4, (("rows", tokens), ("cols", C)))  # x/√2, erf, +1, ·x, ·½
        return [op("bias-gelu", 0, 0, bias), op("bias-gelu", 0, 0, gelu)], [op("bias-gelu", tokens, C)]
    if rule == "layernorm":
        return layernorm_ops(tokens, hidden)
    if rule == "adam":
        return adam_ops([math.prod(s) for s in bert_adam_shapes(hidden, layers, vocab)])
    if rule == "qkv":
        model = load_model("bert-base").replace(hidden=hidden, heads=heads, ffn=4 * hidden)
        serial, fused = qkv_ops(model, tokens)
        sums = [op("grad-accumulate", tokens, hidden)] * 2  # the three input gradients summed
        return serial + sums, fused
    if rule == "attention":
        model = load_model("bert-base").replace(layers=1, hidden=hidden, heads=heads, ffn=4 * hidden)
        ops = build(model, RunSpec(batch=tokens // seq, seq=seq))
        attn = tuple(o for o in ops if o.label("group") in ("Attn B-GEMM", "Scale+Mask+DR+SM"))
        return list(attn), list(fuse_attention(attn, Attention({"default": l2}), "this-cpu"))
    raise ValueError(rule)


LAYER_RULE = "layer (inference)"


def layer_case(tokens: int, hidden: int, heads: int, seq: int):
    """One BERT encoder layer's inference forward (kernels.reference): eager against torch.compile (inductor)."""
    import torch

    from tstack.kernels.fused import Case
    from tstack.kernels.reference import EncoderLayer

    torch.manual_seed(0)
    layer = EncoderLayer(hidden, heads, 4 * hidden).eval()
    compiled = torch.compile(layer, backend="inductor", dynamic=False)
    x = torch.randn(tokens // seq, seq, hidden)
    mask = torch.zeros(tokens // seq, 1, 1, seq)

    def run(module):
        def call():
            with torch.inference_mode():
                return module(x, mask)
        return call

    return Case(LAYER_RULE, f"{tokens // seq}×{seq}×{hidden}", run(layer), run(compiled), 1e-3)


def predicted_layer(tokens: int, hidden: int, heads: int, seq: int):
    """The layer's ops as built (profile none) and under inductor without Q/K/V concatenation (the reference
    layer keeps three Linear modules, which inductor does not merge)."""
    from tstack.models import load_model
    from tstack.spec import RunSpec
    from tstack.workload.build import build
    from tstack.workload.fusion import fuse, load_profile

    model = load_model("bert-base").replace(layers=1, hidden=hidden, heads=heads, ffn=4 * hidden)
    ops = tuple(o for o in build(model, RunSpec(batch=tokens // seq, seq=seq)) if o.label("layer") == "L0")
    profile = dataclasses.replace(load_profile("inductor"), gemm_groups=())
    return list(ops), list(fuse(ops, profile))


def _us(unfused: float, fused: float) -> str:
    return f"{unfused * 1e6:.0f}→{fused * 1e6:.0f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=8192)
    args = p.parse_args()

    from tstack.profiler.runtime import reexec_with_malloc_policy, scheduling

    reexec_with_malloc_policy(sys.argv)
    from tstack.costmodel.backend import cost_workload
    from tstack.costmodel.cost import Cost
    from tstack.host import host_caches
    from tstack.kernels.fused import cases
    from tstack.profiler.fusion import measure_case
    from tstack.profiler.runtime import RuntimeConfig
    from tstack.profiler.timing import TimingPlan

    shape = {k: getattr(args, k) for k in ("tokens", "hidden", "heads", "seq", "layers", "vocab")}
    l2 = host_caches().get(2)
    l2_bytes = l2.size if l2 is not None else 1 << 20
    print(f"load average {os.getloadavg()}, {scheduling()}, threads {args.threads}, L2 {l2_bytes} bytes")
    dev, probe = host_device(args.threads, args.tokens * args.hidden)
    print("host micro-benchmarks:", {k: f"{v:.3g}" for k, v in probe.items()})
    cfg, plan = RuntimeConfig(threads=args.threads), TimingPlan(warmup=3, repeats=args.repeats, rounds=args.rounds)
    header = (f"{'rule':28} {'shape':>24} {'kernels meas':>13} {'kernels pred':>13} {'µs meas':>17} "
              f"{'µs pred':>17} {'speed-up meas':>14} {'speed-up pred':>14} {'max |Δ|':>9}")
    print(header)
    start = time.time()
    layer_shape = {k: shape[k] for k in ("tokens", "hidden", "heads", "seq")}
    for case in [*cases(**shape), layer_case(**layer_shape)]:
        m = measure_case(case, cfg, plan)
        if case.rule == LAYER_RULE:
            unfused, fused = predicted_layer(**layer_shape)
        else:
            unfused, fused = predicted_ops(case.rule, **shape, l2=l2_bytes)
        pu = Cost.total(cost_workload(tuple(unfused), dev)[1])
        pf = Cost.total(cost_workload(tuple(fused), dev)[1])
        print(f"{case.rule:28} {case.shape:>24} {m.unfused_kernels:>6}→{m.fused_kernels:<6} "
              f"{pu.kernels:>6}→{pf.kernels:<6} {_us(m.unfused_seconds, m.fused_seconds):>17} "
              f"{_us(pu.seconds, pf.seconds):>17} {m.speedup:>13.2f}× {pu.seconds / pf.seconds:>13.2f}× "
              f"{m.max_abs_error:>9.1e}", flush=True)
        if m.max_abs_error > case.tolerance:
            raise SystemExit(f"{case.rule}: fused and unfused differ by {m.max_abs_error:.3g} > {case.tolerance}")
    print(f"load average {os.getloadavg()} after {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()

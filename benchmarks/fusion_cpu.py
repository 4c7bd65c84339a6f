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
of studies.repro_002_fusion) costed by the roofline on a host device built from micro-benchmarks run here, in the
same process, and printed:

- memory bandwidth: a streaming add at the cases' sizes; launch overhead: one tiny op's dispatch time;
- matrix rate: a 1024³ GEMM's FLOP/s (GEMMs only);
- vector rate: an inductor-compiled chain of 32 multiply-adds per element (64 FLOPs; one load and one store) over
  fp32 operands resident in the L2: the arithmetic rate of the simple FLOPs (add, multiply, compare) the workload
  counts. An eager element-wise multiply is no measure of it: it moves 12 bytes per FLOP and is bound by the cache;
- transcendentals: eager exp, erf and sqrt on the same operands, each per element in FLOPs at that rate (its time
  per element × the vector rate, its own load and store included). The workload counts each as one FLOP; the host
  model adds (cost − 1) FLOPs per element for the one each kernel computes (softmax: exp; GeLU: erf; Adam: sqrt),
  before fusion, so a fused kernel carries its members' counts. LayerNorm's rsqrt is once per row: not counted.
  Dropout draws no random numbers here (the cases multiply by a mask drawn once, kernels.fused), so it gets none.

Every vector micro-benchmark is timed at 64 Ki fp32 elements per operand (two operands, 512 KiB, inside the L2) and
at one element (the same call's dispatch), each the smallest median of 3 rounds of 30 calls; the difference is the
work of 64 Ki elements.

None of these is fitted to the fusion figures; each is a separate kernel timed before them.
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

IN_CACHE = 64 * 1024  # elements per operand of the vector micro-benchmarks, inside the L2
POLY_STEPS = 32  # multiply-adds per element of the vector-rate kernel: 2 FLOPs each
# Kernel (Op name) -> (the transcendental it computes once per element, FLOPs per element the workload counts for it)
TRANSCENDENTAL = {"softmax": ("exp", 5), "gelu": ("erf", 5), "bias-gelu": ("erf", 6), "adam.sqrt": ("sqrt", 1),
                  "adam.fused": ("sqrt", 14)}


def host_device(threads: int, elems: int):
    """A DeviceSpec of this CPU from micro-benchmarks (bandwidth at ``elems`` fp32 elements per operand), and the
    measured cost of each transcendental in simple element-wise FLOPs."""
    import torch

    from tstack.hardware.device import Efficiency, load_device
    from tstack.profiler.runtime import RuntimeConfig, controlled
    from tstack.profiler.timing import time_callable

    cfg = RuntimeConfig(threads=threads)
    a, b, c = torch.randn(elems), torch.randn(elems), torch.empty(elems)
    x, y, z = torch.randn(1), torch.randn(1), torch.empty(1)
    m1, m2, m3 = torch.randn(1024, 1024), torch.randn(1024, 1024), torch.empty(1024, 1024)

    def poly(t):
        for _ in range(POLY_STEPS):
            t = t * 0.999 + 0.001
        return t

    compiled = torch.compile(poly, backend="inductor", dynamic=False)

    def vector(n: int) -> dict:
        u, w = torch.rand(n) + 0.5, torch.empty(n)
        compiled(u)  # compile for this size outside the timing
        return {"poly": lambda: compiled(u), "exp": lambda: torch.exp(u, out=w), "erf": lambda: torch.erf(u, out=w),
                "sqrt": lambda: torch.sqrt(u, out=w)}

    with controlled(cfg):
        small, large = vector(1), vector(IN_CACHE)  # compiled under the fixed thread count
        add = time_callable(lambda: torch.add(a, b, out=c), cfg, warmup=3, repeats=20).median
        tiny = time_callable(lambda: torch.add(x, y, out=z), cfg, warmup=3, repeats=20).median
        mm = time_callable(lambda: torch.mm(m1, m2, out=m3), cfg, warmup=2, repeats=5).median

        def best(f) -> float:
            return min(time_callable(f, cfg, warmup=3, repeats=30).median for _ in range(3))

        per_elem = {k: max(best(large[k]) - best(small[k]), 1e-12) / (IN_CACHE - 1) for k in small}
    bandwidth = 3 * 4 * elems / max(add - tiny, 1e-9)
    peak = 2 * 1024**3 / mm
    vector_rate = 2 * POLY_STEPS / per_elem["poly"]
    cost = {k: t * vector_rate for k, t in per_elem.items() if k != "poly"}
    base = load_device("xeon-gold-5220-2s")
    dev = dataclasses.replace(
        base, name="this-cpu", compute_units=threads, memory_bandwidth=bandwidth, launch_overhead=tiny,
        peak_flops={"matrix": {"fp32": peak}, "vector": {"fp32": vector_rate}},
        efficiency=Efficiency(tile_m=96, tile_n=96, k_half=1.0, matrix_max=1.0, vector_max=1.0, memory_max=1.0,
                              bytes_half=1.0), sources=("micro-benchmarks of benchmarks/fusion_cpu.py",))
    probe = {"bandwidth_bytes_per_second": bandwidth, "launch_seconds": tiny, "gemm_flop_per_second": peak,
             "vector_flop_per_second": vector_rate, **{f"{k}_flops": c for k, c in cost.items()}}
    return dev, cost, probe


def with_transcendentals(ops, cost: dict[str, float]):
    """The ops with each transcendental counted at its measured cost: (cost − 1) FLOPs more per element."""
    out = []
    for o in ops:
        fn, per = TRANSCENDENTAL.get(o.name, (None, 0))
        out.append(o if fn is None else dataclasses.replace(o, flops=o.flops + round(o.flops / per * (cost[fn] - 1))))
    return out


def predicted_ops(rule: str, tokens: int, hidden: int, heads: int, seq: int, layers: int, vocab: int, l2: int,
                  cost: dict[str, float]):
    """(unfused, fused) tstack Ops of one rule at the case's shapes (fp32, no training copies), transcendentals
    counted at their ``cost`` (with_transcendentals) before fusion."""
    from tstack.models import load_model
    from tstack.spec import RunSpec
    from tstack.studies.repro_002_fusion import adam_ops, layernorm_ops, qkv_ops
    from tstack.workload import formulas as F
    from tstack.workload.build import build
    from tstack.workload.fusion import Attention, fuse_attention, fuse_chains, load_profile
    from tstack.workload.op import Op, OpKind
    from tstack.workload.params import bert_tensor_shapes

    def op(name: str, rows: int, cols: int, counts=None, kind=OpKind.ELEMENTWISE) -> Op:
        c = counts or F.pointwise(name, rows, cols, 4, 4)
        return Op(kind=F.kernel(name).kind if counts is None else kind, name=name, dims=c.dims, dtype="fp32",
                  flops=c.flops, bytes=c.bytes, labels=(("layer", "L0"), ("part", "bench"), ("pass", "fwd")))

    chains = {c.name: c for c in load_profile("inductor").chains}
    if rule == "scale-mask-softmax-dropout":
        rows = tokens // seq * heads * seq
        unfused = with_transcendentals([op(n, rows, seq) for n in ("scale", "mask", "softmax", "dropout")], cost)
        return unfused, list(fuse_chains(tuple(unfused), (chains[rule],), False))
    if rule == "dropout-residual-layernorm":
        unfused = with_transcendentals([op(n, tokens, hidden) for n in ("dropout", "residual", "layernorm")], cost)
        return unfused, list(fuse_chains(tuple(unfused), (chains[rule],), False))
    if rule == "bias-gelu":
        E, C = tokens * 4 * hidden, 4 * hidden
        bias = F.Counts(E, 2 * E * 4 + C * 4, (("rows", tokens), ("cols", C)))  # x + b: read x and b, write
        gelu = F.Counts(5 * E, 2 * E * 4, (("rows", tokens), ("cols", C)))  # x/√2, erf, +1, ·x, ·½
        return (with_transcendentals([op("bias", 0, 0, bias), op("gelu", 0, 0, gelu)], cost),
                with_transcendentals([op("bias-gelu", tokens, C)], cost))
    if rule == "layernorm":
        return layernorm_ops(tokens, hidden)
    if rule == "adam":
        unfused, fused = adam_ops([math.prod(s) for s in bert_tensor_shapes(hidden, 4 * hidden, layers, vocab)])
        return with_transcendentals(unfused, cost), with_transcendentals(fused, cost)
    if rule == "qkv":
        model = load_model("bert-base").replace(hidden=hidden, heads=heads, ffn=4 * hidden)
        serial, fused = qkv_ops(model, tokens)
        sums = [op("grad-accumulate", tokens, hidden)] * 2  # the three input gradients summed
        return serial + sums, fused
    if rule == "attention":
        model = load_model("bert-base").replace(layers=1, hidden=hidden, heads=heads, ffn=4 * hidden)
        ops = build(model, RunSpec(batch=tokens // seq, seq=seq))
        attn = tuple(with_transcendentals([o for o in ops if o.label("group") in ("Attn B-GEMM", "Scale+Mask+DR+SM")],
                                          cost))
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


def predicted_layer(tokens: int, hidden: int, heads: int, seq: int, cost: dict[str, float]):
    """The layer's ops as built (profile none) and under inductor without Q/K/V concatenation (the reference
    layer keeps three Linear modules, which inductor does not merge)."""
    from tstack.models import load_model
    from tstack.spec import RunSpec
    from tstack.workload.build import build
    from tstack.workload.fusion import fuse, load_profile

    model = load_model("bert-base").replace(layers=1, hidden=hidden, heads=heads, ffn=4 * hidden)
    ops = tuple(with_transcendentals([o for o in build(model, RunSpec(batch=tokens // seq, seq=seq))
                                      if o.label("layer") == "L0"], cost))
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
    from tstack.host import host_caches
    from tstack.kernels.fused import cases
    from tstack.profiler.fusion import measure_case
    from tstack.profiler.runtime import RuntimeConfig
    from tstack.profiler.timing import TimingPlan
    from tstack.studies.repro_002_fusion import totals

    shape = {k: getattr(args, k) for k in ("tokens", "hidden", "heads", "seq", "layers", "vocab")}
    l2 = host_caches().get(2)
    l2_bytes = l2.size if l2 is not None else 1 << 20
    print(f"load average {os.getloadavg()}, {scheduling()}, threads {args.threads}, L2 {l2_bytes} bytes")
    dev, cost, probe = host_device(args.threads, args.tokens * args.hidden)
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
            unfused, fused = predicted_layer(**layer_shape, cost=cost)
        else:
            unfused, fused = predicted_ops(case.rule, **shape, l2=l2_bytes, cost=cost)
        pu, pf = totals(unfused, dev), totals(fused, dev)
        print(f"{case.rule:28} {case.shape:>24} {m.unfused_kernels:>6}→{m.fused_kernels:<6} "
              f"{pu.kernels:>6}→{pf.kernels:<6} {_us(m.unfused_seconds, m.fused_seconds):>17} "
              f"{_us(pu.seconds, pf.seconds):>17} {m.speedup:>13.2f}× {pu.seconds / pf.seconds:>13.2f}× "
              f"{m.max_abs_error:>9.1e}", flush=True)
        if m.max_abs_error > case.tolerance:
            raise SystemExit(f"{case.rule}: fused and unfused differ by {m.max_abs_error:.3g} > {case.tolerance}")
    print(f"load average {os.getloadavg()} after {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()

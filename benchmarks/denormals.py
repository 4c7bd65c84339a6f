"""How much slower subnormal (denormal) values make CPU kernels, and what FTZ/DAZ and the value calibrator do about it.

    python benchmarks/denormals.py [--threads 1] [--repeats 20]

003 §IV: NLP-Perf's value calibrator exists because operations on denormals are "hundreds of
times slower" on CPUs. Each row times one kernel, prepared by tstack.profiler.opexec, with
calibrated inputs and with uncalibrated ones (every data tensor scaled by a tiny factor, values.Values(scale=...),
so that the inputs are normal fp32 numbers but the results fall below 1.18e-38), under FTZ/DAZ off and on
(runtime.controlled, which sets it on every OpenMP thread). Printed: the medians, the slowdown of
uncalibrated values without FTZ relative to calibrated ones, and the share of subnormal results.
A benchmark: it prints, it asserts nothing. Timings on a machine shared with other jobs are noisy.
"""

from __future__ import annotations

import argparse

from tstack.profiler.opexec import prepare
from tstack.profiler.runtime import RuntimeConfig, controlled, describe
from tstack.profiler.timing import time_callable
from tstack.profiler.values import Problems, Values, check_finite_normal
from tstack.workload import formulas as F
from tstack.workload.op import Op

# (label, op, scale that makes the results subnormal while the inputs stay normal)
CASES = (
    ("scale 1024×1024 (x·0.125)", ("elementwise", "scale", (("rows", 1024), ("cols", 1024))), 1e-37),
    ("GEMM 256×256×256", ("gemm", "ffn.fc1", F.gemm(256, 256, 256, 1, 4, 4).dims), 1e-20),
    ("B-GEMM 12×(128×128×64)", ("bgemm", "attn.score", F.gemm(128, 128, 64, 12, 4, 4).dims), 1e-20),
    ("softmax-bwd 1024×512", ("reduction", "softmax-bwd", (("rows", 1024), ("cols", 512))), 1e-36),
)


def timed(op: Op, cfg: RuntimeConfig, values: Values, repeats: int) -> tuple[float, Problems]:
    p = prepare(op, cfg, values=values)
    with controlled(cfg):
        t = time_callable(p.run, cfg, warmup=3, repeats=repeats)
        p.run()
    return t.median, sum((check_finite_normal(o) for o in p.outputs.values()), Problems())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    off = RuntimeConfig(threads=args.threads, flush_denormal=False)
    on = RuntimeConfig(threads=args.threads, flush_denormal=True)
    with controlled(on) as applied:
        print(describe(on, applied))
    print(f"fp32, median of {args.repeats}; 'subnormal' = share of results that are subnormal with FTZ off")
    print(f"{'kernel':<28}{'calibrated':>12}{'uncal. FTZ off':>16}{'uncal. FTZ on':>15}{'slowdown':>10}{'FTZ gain':>10}"
          f"{'subnormal':>11}")
    for label, (kind, name, dims), scale in CASES:
        op = Op(kind, name, dims, "fp32", 0, 0, ())
        calibrated, _ = timed(op, off, Values(), args.repeats)
        slow, problems = timed(op, off, Values(scale=scale), args.repeats)
        flushed, _ = timed(op, on, Values(scale=scale), args.repeats)
        share = problems.subnormal / problems.elements if problems.elements else 0.0
        print(f"{label:<28}{calibrated * 1e3:>10.3f}ms{slow * 1e3:>14.3f}ms{flushed * 1e3:>13.3f}ms"
              f"{slow / calibrated:>9.1f}×{slow / flushed:>9.1f}×{share:>10.0%}")


if __name__ == "__main__":
    main()

"""What the allocator does to a timing: softmax over attention-sized scores, preallocated vs allocating each call.

    python benchmarks/allocator.py [--threads 1] [--repeats 30]

For each glibc malloc policy (the default dynamic mmap threshold, and a fixed threshold of
128 KiB set with MALLOC_MMAP_THRESHOLD_, which every allocation above it pays with mmap, page
faults and munmap) and each shape (12×512×512 = 12.6 MB and 48×512×512 = 50 MB of fp32 scores,
BERT-Base attention at batch 1 and 4), a child process times

    preallocated   torch.ops.aten._softmax.out(x, -1, False, out=y)   (what tstack.profiler runs)
    allocating     torch.softmax(x, -1)                                (a new output every call)

with tstack.profiler.timing.time_callable (warm-up, median of --repeats) inside
runtime.controlled (fixed threads, FTZ/DAZ on). It prints both medians and their ratio.
A benchmark: it prints, it asserts nothing. Timings on a machine shared with other jobs are noisy.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

SHAPES = ((12, 512, 512), (48, 512, 512))
POLICIES = (("glibc default", {}), ("fixed mmap threshold", {"MALLOC_MMAP_THRESHOLD_": "131072"}))


def child(shape: tuple[int, ...], threads: int, repeats: int) -> str:
    import torch

    from tstack.profiler.runtime import RuntimeConfig, controlled
    from tstack.profiler.timing import time_callable

    cfg = RuntimeConfig(threads=threads)
    x = torch.randn(shape)
    y = torch.empty_like(x)
    with controlled(cfg):
        pre = time_callable(lambda: torch.ops.aten._softmax.out(x, -1, False, out=y), cfg, warmup=5, repeats=repeats)
        alloc = time_callable(lambda: torch.softmax(x, -1), cfg, warmup=5, repeats=repeats)
    return f"{pre.median * 1e3:.3f} {alloc.median * 1e3:.3f} {pre.spread:.2f} {alloc.spread:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(child(tuple(int(v) for v in args.child.split("x")), args.threads, args.repeats))
        return
    from tstack.profiler.runtime import RuntimeConfig, controlled, describe

    cfg = RuntimeConfig(threads=args.threads)
    with controlled(cfg) as applied:
        print(describe(cfg, applied))
    print(f"softmax over the last dim, fp32, median of {args.repeats} (spread = (p90 - p10) / median)")
    print(f"{'malloc policy':<22}{'shape':<14}{'MB':>6}{'prealloc ms':>13}{'alloc ms':>10}{'alloc/prealloc':>16}  spread")
    for policy, env in POLICIES:
        for shape in SHAPES:
            spec = "x".join(map(str, shape))
            out = subprocess.run([sys.executable, __file__, "--child", spec, "--threads", str(args.threads),
                                  "--repeats", str(args.repeats)], env={**os.environ, **env}, check=True,
                                 capture_output=True, text=True).stdout.split()
            pre, alloc, s_pre, s_alloc = (float(v) for v in out[-4:])
            mb = 4 * shape[0] * shape[1] * shape[2] / 1e6
            print(f"{policy:<22}{'×'.join(map(str, shape)):<14}{mb:>6.1f}{pre:>13.3f}{alloc:>10.3f}{alloc / pre:>15.2f}×"
                  f"  {s_pre:.2f} / {s_alloc:.2f}")


if __name__ == "__main__":
    main()

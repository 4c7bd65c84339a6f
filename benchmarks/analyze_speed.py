"""How fast tstack predicts: one BERT-Large training iteration, and a 10,000-configuration sweep.

    python benchmarks/analyze_speed.py [--repeats 30] [--skip-serial]

(a) tstack.analyze('bert-large', RunSpec(mode='train', batch=32, seq=128), 'mi100'): median
    of the timed runs after warm-up, beside the goal of 20 ms, and its split into loading the
    presets, building the Ops and costing them.
(b) tstack.sweep over batch × seq × layers × hidden × precision (10 × 10 × 10 × 5 × 2 = 10,000
    BERT-Large training configurations on mi100), with executor='process' on every core,
    beside the goal of 10 s on 2 cores, and with executor='serial' as the baseline.
A benchmark: it prints, it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import tstack
from tstack import RunSpec
from tstack.costmodel.roofline import roofline
from tstack.hardware.device import load_device
from tstack.models import load_model
from tstack.workload.build import build

GOAL_ANALYZE_S = 0.020
GOAL_SWEEP_S = 10.0
GOAL_SWEEP_CORES = 2
WARMUP = 3
AXES = {
    "batch": [1, 2, 4, 8, 16, 24, 32, 48, 64, 128],
    "seq": [32, 64, 96, 128, 192, 256, 320, 384, 448, 512],
    "layers": [2, 4, 6, 8, 12, 16, 20, 24, 32, 48],
    "hidden": [256, 512, 768, 1024, 2048],
    "precision": ["fp32", "fp16-mixed"],
}


def timings(fn: Callable[[], object], repeats: int) -> list[float]:
    for _ in range(WARMUP):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def median_s(fn: Callable[[], object], repeats: int) -> float:
    return statistics.median(timings(fn, repeats))


def ms(s: float) -> str:
    return f"{s * 1e3:8.2f} ms"


def bench_analyze(repeats: int) -> None:
    run = RunSpec(mode="train", batch=32, seq=128)
    model, device = load_model("bert-large"), load_device("mi100")
    ops = build(model, run)
    times = timings(lambda: tstack.analyze("bert-large", run, "mi100"), repeats)
    total = statistics.median(times)
    preloaded = median_s(lambda: tstack.analyze(model, run, device), repeats)
    load = median_s(lambda: (load_model("bert-large"), load_device("mi100")), repeats)
    build_s = median_s(lambda: build(model, run), repeats)
    cost_s = median_s(lambda: [roofline(op, device) for op in ops], repeats)
    print(f"(a) analyze('bert-large', train B=32 n=128, 'mi100'): {len(ops)} ops, median of {repeats} after {WARMUP} warm-up")
    print(f"    analyze, names (parses both YAML presets)  {ms(total)}   goal {ms(GOAL_ANALYZE_S)}   "
          f"{total / GOAL_ANALYZE_S:.2f}× the goal   (min {min(times) * 1e3:.2f} ms, max {max(times) * 1e3:.2f} ms)")
    print(f"    analyze, ModelSpec + DeviceSpec given       {ms(preloaded)}")
    print(f"      load presets (load_model + load_device)   {ms(load)}")
    print(f"      build (workload.build, all ops)           {ms(build_s)}")
    print(f"      cost  (roofline per op)                   {ms(cost_s)}")
    rest = total - load - build_s - cost_s
    print(f"      rest  (Breakdown, RunSpec, dispatch)      {ms(rest)}")


def bench_sweep(skip_serial: bool) -> None:
    n = 1
    for values in AXES.values():
        n *= len(values)
    base = RunSpec(mode="train")
    cores = os.cpu_count() or 1
    print(f"(b) sweep of {n:,} configurations (bert-large training on mi100: "
          + " × ".join(f"{k} {len(v)}" for k, v in AXES.items()) + ")")
    t0 = time.perf_counter()
    df = tstack.sweep("bert-large", AXES, "mi100", run=base, executor="process")
    process_s = time.perf_counter() - t0
    configs = len(df.drop_duplicates(["batch", "seq", "layers", "hidden", "precision"]))
    print(f"    executor='process', {cores} workers   {process_s:7.2f} s   {configs:,} configs, {len(df):,} rows   "
          f"goal {GOAL_SWEEP_S:.0f} s on {GOAL_SWEEP_CORES} cores   {1e6 * process_s / n:.0f} µs/config")
    if skip_serial:
        return
    t0 = time.perf_counter()
    tstack.sweep("bert-large", AXES, "mi100", run=base, executor="serial")
    serial_s = time.perf_counter() - t0
    print(f"    executor='serial'               {serial_s:7.2f} s   {1e6 * serial_s / n:.0f} µs/config")
    print(f"    speed-up process/serial         {serial_s / process_s:7.2f}×  on {cores} cores")


def load_average() -> str:
    if not hasattr(os, "getloadavg"):
        return "load average unknown"
    return "load average (1, 5, 15 min) " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--skip-serial", action="store_true")
    args = ap.parse_args()
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"machine: os.cpu_count() = {os.cpu_count()}, usable by this process = {affinity}, {load_average()}")
    bench_analyze(args.repeats)
    bench_sweep(args.skip_serial)
    print(f"after: {load_average()} (other processes on the machine inflate every figure above)")


if __name__ == "__main__":
    main()

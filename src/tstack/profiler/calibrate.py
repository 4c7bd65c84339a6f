"""`tstack calibrate`: micro-benchmarks on this machine -> a device file with fitted peaks and kernel tables.

Steps:
    grid          the micro-benchmark Ops: GEMMs of several sizes and aspect ratios, batched
                  GEMMs, every registered element-wise/reduction kernel over several sizes and
                  row lengths, optimizer stages, copies and the embedding gather
    measure       each Op through the profiler's executor (warm-up, repeats, median)
    tables        seconds per grid point -> calibration tables (interpolated in log-log space)
    fit           peak FLOP/s, memory bandwidth, launch overhead and roofline efficiency terms
    device        a DeviceSpec carrying both, written as YAML by the caller

Nothing here is measured on the shapes of any model: the grid is generic powers of two.
"""

from __future__ import annotations

import math
import os
import platform
import random
from collections.abc import Callable
from dataclasses import dataclass, replace

from tstack.calibration import Calibration, Table
from tstack.costmodel.roofline import roofline
from tstack.hardware.device import DeviceSpec, Efficiency
from tstack.profiler.opexec import prepare
from tstack.profiler.runtime import RuntimeConfig, controlled, describe
from tstack.profiler.timing import MIN_SAMPLE_S, time_callable
from tstack.profiler.values import Draw, Pool, PooledDraw, pool_size
from tstack.workload import formulas as F
from tstack.workload.op import Op, OpKind

# Generic sizes, no model's shapes (interpolation covers the rest). GEMMs: powers of two up to 128 (M = 8: a pooler or
# a classifier over a small batch), then √2 apart rounded to a multiple of 64 (the step of the GEMM kernels' blocking):
# 2× steps there left interpolation 5-9% high, because time is not log-linear between 512 and 1024.
GEMM_DIMS = (8, 16, 32, 64, 128, 192, 256, 384, 512, 704, 1024, 1472, 2048, 2880, 4096)
BGEMM_DIMS = tuple(1 << i for i in range(5, 11))  # 32 … 1024
BGEMM_BATCHES = (8, 32, 128)  # per-entry time falls with the batch as threads share it out and overheads spread
KERNEL_ELEMS = tuple(1 << i for i in range(12, 24))  # 4 Ki … 8 Mi elements
KERNEL_COLS = tuple(1 << i for i in range(6, 13))  # rows of 64 … 4096
# 4 Ki … 64 Mi parameters: the top reaches past a server's last-level cache (a tensor of 2^26 fp32 is 256 MiB), so
# optimizer stages over a whole model run in the DRAM-bound regime the table extrapolates from.
PARAM_ELEMS = tuple(1 << i for i in range(12, 27))
QUICK = {"GEMM_DIMS": (64, 512), "BGEMM_DIMS": (32, 256), "BGEMM_BATCHES": (2, 8), "KERNEL_ELEMS": (1 << 10, 1 << 14),
         "KERNEL_COLS": (64, 512), "PARAM_ELEMS": (1 << 10, 1 << 14)}
BGEMM_MAX_FLOPS = 8 * 10**9  # one batched-GEMM call at most (about 30 ms at 300 GFLOP/s); see bgemm_entries
_LABELS = (("part", "calibrate"), ("layer", "-"), ("block", "-"), ("group", "-"), ("nlpfast", "-"), ("pass", "fwd"))


@dataclass(frozen=True)
class Grid:
    """The micro-benchmark sizes (``Grid.quick()`` is a tiny grid for tests)."""

    gemm: tuple[int, ...] = GEMM_DIMS
    bgemm: tuple[int, ...] = BGEMM_DIMS
    batches: tuple[int, ...] = BGEMM_BATCHES
    elems: tuple[int, ...] = KERNEL_ELEMS
    cols: tuple[int, ...] = KERNEL_COLS
    params: tuple[int, ...] = PARAM_ELEMS

    @classmethod
    def quick(cls) -> Grid:
        return cls(QUICK["GEMM_DIMS"], QUICK["BGEMM_DIMS"], QUICK["BGEMM_BATCHES"], QUICK["KERNEL_ELEMS"], QUICK["KERNEL_COLS"],
                   QUICK["PARAM_ELEMS"])


def bgemm_entries(M: int, N: int, K: int, batch: int, batches: tuple[int, ...]) -> int:
    """Entries timed for the batched-GEMM grid point (M, N, K, batch): the batch itself, or fewer where one call
    would exceed ``BGEMM_MAX_FLOPS`` (at least the grid's smallest batch, in multiples of it).

    The table holds seconds per entry. Per-entry time falls with the batch only while entries are small
    (threads share them out, per-call overhead spreads); entries this large already fill every thread, so the
    per-entry time of the smaller batch is that of the larger, and timing 128 entries of 1024³ (0.3 TFLOP,
    1.5 GB of operands) would cost seconds per point for nothing.
    """
    per_entry = 2 * M * N * K
    if per_entry * batch <= BGEMM_MAX_FLOPS:
        return batch
    step = min(batches)
    return min(batch, max(step, step * int(BGEMM_MAX_FLOPS // (per_entry * step))))


def _gemm_op(kind: str, M: int, N: int, K: int, batch: int) -> Op:
    c = F.gemm(M, N, K, batch, 4, 4)
    return Op(kind=kind, name=kind, dims=c.dims, dtype="fp32", flops=c.flops, bytes=c.bytes, labels=_LABELS)


def _pointwise_op(name: str, rows: int, cols: int) -> Op:
    c = F.pointwise(name, rows, cols, 4)
    return Op(kind=F.kernel(name).kind, name=name, dims=c.dims, dtype="fp32", flops=c.flops, bytes=c.bytes, labels=_LABELS)


def _param_op(kind: str, name: str, params: int, flops: int, traffic: int) -> Op:
    return Op(kind=kind, name=name, dims=(("params", params),), dtype="fp32", flops=flops, bytes=traffic, labels=_LABELS)


def _param_ops(params: int) -> list[Op]:
    """Optimizer stages, LAMB norms, mixed-precision copies (fp16 model copy) over ``params`` elements."""
    ops = [_param_op(OpKind.ELEMENTWISE, stage, params, cost.flops * params, 4 * params * (cost.reads + cost.writes))
           for stages in F.OPTIMIZER_STAGES.values() for stage, cost in stages]
    ops.append(_param_op(OpKind.REDUCTION, "lamb-norms", params, 4 * params, 8 * params))
    ops.append(_param_op(OpKind.REDUCTION, "lamb-global-norm", params, 2 * params, 4 * params))
    ops.append(Op(kind=OpKind.COPY, name="grad-to-master", dims=(("params", params),), dtype="fp16", flops=params,
                   bytes=6 * params, labels=_LABELS))
    ops.append(Op(kind=OpKind.COPY, name="master-to-model", dims=(("params", params),), dtype="fp16", flops=0,
                   bytes=6 * params, labels=_LABELS))
    return ops


def grid_ops(grid: Grid) -> dict[str, tuple[tuple[tuple[int, ...], ...], list[Op]]]:
    """Table name -> (axes, Ops in row-major grid order)."""
    out: dict[str, tuple[tuple[tuple[int, ...], ...], list[Op]]] = {}
    g = grid.gemm
    out["gemm.fp32"] = ((g, g, g), [_gemm_op(OpKind.GEMM, M, N, K, 1) for M in g for N in g for K in g])
    b = grid.bgemm
    out["bgemm.fp32"] = ((b, b, b, grid.batches),
                         [_gemm_op(OpKind.BGEMM, M, N, K, bgemm_entries(M, N, K, n, grid.batches))
                          for M in b for N in b for K in b for n in grid.batches])
    for name in F.KERNELS:
        out[name] = ((grid.elems, grid.cols), [_pointwise_op(name, max(1, e // c), c) for e in grid.elems for c in grid.cols])
    gathers = []
    for e in grid.elems:
        for c in grid.cols:
            counts = F.gather(max(1, e // c), c, 4)
            gathers.append(Op(kind=OpKind.GATHER, name="gather", dims=counts.dims, dtype="fp32", flops=0,
                               bytes=counts.bytes, labels=_LABELS))
    out["gather"] = ((grid.elems, grid.cols), gathers)
    per_param: dict[str, list[Op]] = {}
    for p in grid.params:
        for op in _param_ops(p):
            per_param.setdefault(op.name, []).append(op)
    for name, ops in per_param.items():
        out[name] = ((grid.params,), ops)
    return out


BIG_FLOPS = 2e9  # GEMMs above this run long enough that fewer repeats give a stable median
BIG_BYTES = 256 << 20  # so do memory-bound kernels that move more than this
POOL_MAX = (1 << 26) + (1 << 22)  # fp32 values per pool: the largest grid tensor (2^26 parameters) fits


def is_big(op: Op) -> bool:
    return op.flops > BIG_FLOPS or op.bytes > BIG_BYTES


def _seconds(op: Op, cfg: RuntimeConfig, repeats: int, draw: Draw | None = None) -> float:
    """Median seconds of one grid point. Big ops (``is_big``) take no separate warm-up: ``time_callable``'s
    first, untimed call that sizes the sample batch warms them (touches the output pages), and at most
    3 samples; small ops get 2 warm-up calls and ``repeats`` samples."""
    prepared = prepare(op, cfg, draw=draw)
    big = is_big(op)
    return time_callable(prepared.run, cfg, warmup=0 if big else 2, repeats=min(repeats, 3) if big else repeats).median


def _pool_size(grids: dict) -> int:
    return pool_size((op for _, ops in grids.values() for op in ops), POOL_MAX)


def measure_tables(grid: Grid, cfg: RuntimeConfig, repeats: int = 5, rounds: int = 1,
                   progress: Callable[[int], None] | None = None, seed: int = 0) -> dict[str, Table]:
    """Time every grid Op; a table per kernel (bgemm tables hold seconds per batch entry).

    The Ops run in a shuffled order, as kernels interleave in a real model: run in table order,
    small kernels would all be timed in the state (clock frequency, caches) that a stretch of
    similar kernels leaves, which is not the state a GEMM-heavy model runs them in. With
    ``rounds`` > 1 the whole grid is timed again in a new order each round and a point keeps the
    smallest of its rounds' medians (``timing.Plan`` says why).
    Row-length grids keep cols ≤ elements, so rows·cols is exactly the element count of the axis.
    """
    grids = grid_ops(grid)
    points = [(name, i) for name, (_, ops) in grids.items() for i in range(len(ops))]
    seconds: dict[str, list[float]] = {name: [math.inf] * len(ops) for name, (_, ops) in grids.items()}
    with controlled(cfg):
        pool = Pool(_pool_size(grids), seed) if cfg.device == "cpu" else None
        draw = PooledDraw(seed, "cpu", pool=pool) if pool is not None else None
        for r in range(rounds):
            for name, i in random.Random(seed + r).sample(points, len(points)):
                op = grids[name][1][i]
                t = _seconds(op, cfg, repeats, draw)
                seconds[name][i] = min(seconds[name][i], t / op.dim("batch", 1) if op.kind == OpKind.BGEMM else t)
                if progress:
                    progress(1)
    return {name: Table(tuple(tuple(float(v) for v in a) for a in axes), tuple(seconds[name]))
            for name, (axes, _) in grids.items()}


# Rough costs for the up-front estimate of a calibration's duration (estimate_seconds); fitted by eye to runs on the
# 2-core VM this was developed on, where they came within ±30% of the measured time.
POINT_OVERHEAD_S = 1.5e-3  # Python, the executor and a few small samples per grid point
PREPARE_S_PER_BYTE = 0.4e-9  # drawing the inputs from the pool and allocating the outputs
ASSUMED_BYTES_PER_SECOND = 10e9  # memory-bound kernels (the calibration measures the real figure)


def estimate_seconds(grid: Grid, cfg: RuntimeConfig, rounds: int, repeats: int, flop_per_second: float) -> float:
    """Expected wall time of ``calibrate`` on ``grid``: per point, an overhead, the inputs' preparation and the
    calls ``_seconds`` makes, each at ``flop_per_second`` (a probe's GEMM rate) or the assumed bandwidth."""
    total = 0.0
    for _, ops in grid_ops(grid).values():
        for op in ops:
            t = max(op.flops / max(flop_per_second, 1.0), op.bytes / ASSUMED_BYTES_PER_SECOND)
            calls = 4 * t if is_big(op) else 3 * t + repeats * max(t, MIN_SAMPLE_S)
            total += POINT_OVERHEAD_S + PREPARE_S_PER_BYTE * op.bytes + calls
    return rounds * total


def grid_size(grid: Grid) -> int:
    return sum(len(ops) for _, ops in grid_ops(grid).values())


def _fit_efficiency(tables: dict[str, Table], dev: DeviceSpec, grid: Grid) -> Efficiency:
    """Roofline tile and K-loop terms that best explain the measured GEMM grid (least squares in log time)."""
    best: tuple[float, Efficiency] | None = None
    ops = grid_ops(grid)["gemm.fp32"][1]
    measured = tables["gemm.fp32"].seconds
    for tile in (16, 32, 64, 128):
        for k_half in (4.0, 16.0, 64.0, 256.0):
            eff = Efficiency(tile_m=tile, tile_n=tile, k_half=k_half, matrix_max=1.0, vector_max=1.0, memory_max=1.0,
                             bytes_half=dev.efficiency.bytes_half)
            trial = replace(dev, efficiency=eff)
            err = sum((math.log(roofline(op, trial).seconds) - math.log(t)) ** 2 for op, t in zip(ops, measured))
            if best is None or err < best[0]:
                best = (err, eff)
    assert best is not None
    return best[1]


def fit_device(tables: dict[str, Table], cfg: RuntimeConfig, grid: Grid, name: str) -> DeviceSpec:
    """Peak rates, bandwidth and overhead from the tables, and the tables themselves."""
    ops = grid_ops(grid)
    gemm_ops, gemm_s = ops["gemm.fp32"][1], tables["gemm.fp32"].seconds
    matrix_peak = max(op.flops / t for op, t in zip(gemm_ops, gemm_s))
    vector_peak = max(op.flops / t for k in F.KERNELS for op, t in zip(ops[k][1], tables[k].seconds) if op.flops)
    # DRAM bandwidth: the residual add (2 reads, 1 write) at the largest size, beyond the caches.
    biggest = max(op.bytes for op in ops["residual"][1])
    bandwidth = max(op.bytes / t for op, t in zip(ops["residual"][1], tables["residual"].seconds) if op.bytes == biggest)
    overhead = min(min(tables[k].seconds) for k in F.KERNELS)
    memory = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    units = cfg.threads
    dev = DeviceSpec(
        name=name, kind="gpu" if cfg.device == "cuda" else "cpu", compute_units=units,
        peak_flops={"matrix": {"fp32": matrix_peak}, "vector": {"fp32": vector_peak}},
        memory_bandwidth=bandwidth, memory_capacity=memory, launch_overhead=overhead,
        description=f"calibrated on {platform.node() or 'this machine'} ({platform.processor() or platform.machine()}), "
                    f"{cfg.threads} threads",
        sources=("tstack calibrate: peaks are the best attained rates of the micro-benchmarks",
                 "efficiency: tile and K-loop terms fitted to the GEMM grid; kernel tables measured"),
    )
    eff = _fit_efficiency(tables, dev, grid)
    calibration = Calibration(cfg.threads, tables, describe(cfg))
    return replace(dev, efficiency=eff, calibration=calibration)


def calibrate(cfg: RuntimeConfig, grid: Grid | None = None, name: str = "calibrated", repeats: int = 5,
              rounds: int = 1, progress: Callable[[int], None] | None = None) -> DeviceSpec:
    """Run the micro-benchmarks and return the fitted device (the caller writes it)."""
    grid = grid or Grid()
    tables = measure_tables(grid, cfg, repeats, rounds, progress)
    return fit_device(tables, cfg, grid, name)

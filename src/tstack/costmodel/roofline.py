"""Roofline cost model with size-dependent efficiency: (op, device) -> Cost.

time = max(FLOPs / (peak · compute efficiency), bytes / (bandwidth · memory efficiency))
       + launch overhead, per instance, times the Op's count. The launch overhead is paid by
ops launched one by one (eager execution); CUDA-graph / compiled runs (``op.launch`` false)
replay the graph with the launches amortized away. See hardware.Efficiency for
the efficiency terms (tile and wave quantization, K-loop length, kernel size).
"""

from __future__ import annotations

import math

from tstack.costmodel.cost import Cost
from tstack.hardware.device import DeviceSpec
from tstack.workload.op import Op, OpKind

# Storage dtypes that compute on the vector units in fp32 (int32 accumulators, casts).
_VECTOR_DTYPE = {"fp32": "fp32", "tf32": "fp32", "fp16": "fp16", "bf16": "bf16", "int8": "fp32", "int32": "fp32"}


SPLIT_K_MIN = 256  # a split-K slice is at least this deep


def _tile(dim: int, full: int) -> int:
    """Tile edge a GEMM library picks: the full tile, or the next power of two ≥ 16 for a small dimension."""
    return min(full, max(16, 1 << (dim - 1).bit_length()))


def gemm_efficiency(M: int, N: int, K: int, batch: int, dev: DeviceSpec) -> float:
    """matrix_max × operand reuse × tile quantization × wave quantization × K-loop efficiency.

    A small M or N gets a smaller tile (less operand reuse: √ of the tile-area ratio); when
    there are fewer tiles than compute units, K is split across the idle units (split-K).
    """
    e = dev.efficiency
    tm, tn = _tile(M, e.tile_m), _tile(N, e.tile_n)
    reuse = math.sqrt((tm * tn) / (e.tile_m * e.tile_n))
    nm, nn = math.ceil(M / tm), math.ceil(N / tn)
    tile_util = (M * N) / (nm * tm * nn * tn)
    tiles = nm * nn * batch
    split = max(1, min(dev.compute_units // tiles, K // SPLIT_K_MIN)) if tiles < dev.compute_units else 1
    k = K / split
    waves = math.ceil(tiles * split / dev.compute_units)
    wave_util = tiles * split / (waves * dev.compute_units)
    return e.matrix_max * reuse * tile_util * wave_util * (k / (k + e.k_half))


def memory_efficiency(nbytes: float, dev: DeviceSpec) -> float:
    e = dev.efficiency
    return e.memory_max * nbytes / (nbytes + e.bytes_half)


def roofline(op: Op, dev: DeviceSpec) -> Cost:
    """Cost of all ``op.count`` instances of an Op on a device."""
    if op.is_gemm:
        peak = dev.peak("matrix", op.dtype)
        eff = gemm_efficiency(*op.gemm_shape, dev)
    else:
        # Copies convert between the model dtype and fp32 master tensors: fp32 arithmetic.
        peak = dev.peak("vector", "fp32" if op.kind == OpKind.COPY else _VECTOR_DTYPE.get(op.dtype, "fp32"))
        eff = dev.efficiency.vector_max
    n = op.count
    compute_s = op.flops / (peak * eff) if op.flops else 0.0
    memory_s = op.bytes / (dev.memory_bandwidth * memory_efficiency(op.bytes, dev)) if op.bytes else 0.0
    overhead_s = dev.launch_overhead if op.launch else 0.0
    # Only the dominant resource's time is spent; the other is hidden under it.
    busy = max(compute_s, memory_s)
    hidden_c, hidden_m = (busy, 0.0) if compute_s >= memory_s else (0.0, busy)
    return Cost(seconds=n * (busy + overhead_s), flops=n * op.flops, bytes=n * op.bytes, compute_s=n * hidden_c,
                memory_s=n * hidden_m, overhead_s=n * overhead_s, ideal_s=n * op.flops / peak, kernels=n)

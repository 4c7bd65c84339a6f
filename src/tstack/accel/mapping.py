"""GEMM mappings: capacity legality, Gemmini's tiled_matmul_auto heuristic, and a search for the best legal mapping.

Capacity (Gemmini's tiled_matmul_total_spad_rows / _acc_rows, in DIM-wide rows):
    scratchpad rows (ti·tk + tk·tj)·DIM <= spad_rows (/2 when double-buffered)
    accumulator rows ti·tj·DIM          <= acc_rows  (/2 when double-buffered)
A candidate that breaks a limit raises Infeasible, which the search skips.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

from tstack.accel.energy import gemm_energy
from tstack.accel.hw import AccelSpec
from tstack.accel.timing import GemmShape, GemmTiming, Mapping, double_buffered, gemm_timing
from tstack.errors import TstackError

ORDERS = ("ijk", "jik")
OBJECTIVES = ("latency", "energy", "edp")


class Infeasible(TstackError):
    """A mapping or schedule the hardware cannot hold; searches skip it."""


def limits(hw: AccelSpec) -> tuple[int, int]:
    """(scratchpad rows, accumulator rows) one tile may use."""
    half = 2 if double_buffered(hw) else 1
    return hw.spad_rows // half, hw.acc_rows // half


def check(hw: AccelSpec, shape: GemmShape, m: Mapping) -> None:
    """Raise Infeasible unless the mapping's tiles fit the memories and the GEMM."""
    D = hw.dim
    bI, bJ, bK = shape.blocks(D)
    if m.order not in ORDERS:
        raise Infeasible(f"order={m.order!r} is not one of {', '.join(ORDERS)}")
    for name, t, n in (("ti", m.ti, bI), ("tj", m.tj, bJ), ("tk", m.tk, bK)):
        if not 1 <= t <= n:
            raise Infeasible(f"{name}={t} must be in [1, {n}] blocks of {D} for GEMM {shape.I}×{shape.J}×{shape.K}")
    spad, acc = limits(hw)
    if (m.ti * m.tk + m.tk * m.tj) * D > spad:
        raise Infeasible(f"tiles ti={m.ti}, tj={m.tj}, tk={m.tk} need {(m.ti * m.tk + m.tk * m.tj) * D} scratchpad rows; "
                         f"{spad} available on {hw.name}")
    if m.ti * m.tj * D > acc:
        raise Infeasible(f"tiles ti={m.ti}, tj={m.tj} need {m.ti * m.tj * D} accumulator rows; {acc} available on {hw.name}")


def heuristic(hw: AccelSpec, shape: GemmShape, full_rows: bool = False) -> Mapping:
    """Gemmini's tiled_matmul_auto: start square I/J from the accumulator and K from the scratchpad, grow J, I, K greedily.

    ``full_rows`` is the LayerNorm/Softmax case: tile_I = 1 with a full-row tile_J, because the whole row must sit in
    the accumulator (gemmini.h). Raises Infeasible when even that start does not fit.
    """
    D = hw.dim
    bI, bJ, bK = shape.blocks(D)
    db = double_buffered(hw)
    spad_max, acc_max = limits(hw)
    # gemmini.h: db_mats_in_acc = (ACC_ROWS/2)/DIM, db_max_tile_i_j = sqrt(.), db_max_tile_k = db_mats_in_partition / that
    partition_rows = hw.spad_rows // 2 // (2 if db else 1)
    ij = max(1, math.isqrt(acc_max // D))
    k = max(1, (partition_rows // D) // ij)
    ti, tj, tk = (1, bJ, 1) if full_rows else (min(bI, ij), min(bJ, ij), min(bK, k))

    def fits(i: int, j: int, kk: int) -> bool:
        return (i * kk + kk * j) * D <= spad_max and i * j * D <= acc_max

    # A scratchpad small against the accumulator cannot hold the square start that gemmini.h derives from the
    # accumulator alone (it asserts there): shrink the larger of tile_I / tile_J until the A and B tiles fit.
    while not full_rows and not fits(ti, tj, tk) and max(ti, tj) > 1:
        ti, tj = (ti - 1, tj) if ti >= tj else (ti, tj - 1)
    check(hw, shape, Mapping(ti, tj, tk))

    while True:
        grown = False
        if tj + 1 <= bJ and fits(ti, tj + 1, tk):
            tj, grown = tj + 1, True
        if ti + 1 <= bI and fits(ti + 1, tj, tk):
            ti, grown = ti + 1, True
        if tk + 1 <= bK and fits(ti, tj, tk + 1):
            tk, grown = tk + 1, True
        if not grown:
            return Mapping(ti, tj, tk)


def _fold_sizes(n: int) -> list[int]:
    """Tile factors that give distinct tile counts: ceil(n/q) for q = 1..n (about 2·sqrt(n) values)."""
    return sorted({-(-n // q) for q in range(1, n + 1)})


def candidates(hw: AccelSpec, shape: GemmShape, full_rows: bool = False) -> Iterator[Mapping]:
    """Every mapping of the search space (legal or not); full-row tiles only when ``full_rows``."""
    bI, bJ, bK = shape.blocks(hw.dim)
    for ti in _fold_sizes(bI):
        for tj in [bJ] if full_rows else _fold_sizes(bJ):
            for tk in _fold_sizes(bK):
                for order in ORDERS:
                    yield Mapping(ti, tj, tk, order, reuse=tk == bK)


def score(hw: AccelSpec, timing: GemmTiming, objective: str) -> float:
    """The value an objective minimizes: cycles, joules or their product."""
    if objective == "latency":
        return timing.cycles
    joules = gemm_energy(hw, timing).total
    return joules if objective == "energy" else joules * hw.seconds(timing.cycles)


def best(hw: AccelSpec, shape: GemmShape, objective: str = "latency", full_rows: bool = False,
         out_bytes: int = 1) -> tuple[Mapping, GemmTiming]:
    """The legal mapping with the lowest objective (the heuristic's own mapping is always a candidate)."""
    if objective not in OBJECTIVES:
        raise TstackError(f"objective={objective!r} is not one of {', '.join(OBJECTIVES)}")
    found: tuple[float, Mapping, GemmTiming] | None = None
    try:
        pool: list[Mapping] = [heuristic(hw, shape, full_rows)]
    except Infeasible:
        pool = []
    for m in [*pool, *candidates(hw, shape, full_rows)]:
        try:
            check(hw, shape, m)
        except Infeasible:
            continue
        t = gemm_timing(hw, shape, m, out_bytes)
        v = score(hw, t, objective)
        if found is None or v < found[0]:
            found = (v, m, t)
    if found is None:
        raise Infeasible(f"no legal mapping of GEMM {shape.I}×{shape.J}×{shape.K} on {hw.name}"
                         + (" with whole rows in the accumulator" if full_rows else ""))
    return found[1], found[2]


Mapper = Callable[[AccelSpec, GemmShape, bool, int], tuple[Mapping, GemmTiming]]


def auto(hw: AccelSpec, shape: GemmShape, full_rows: bool = False, out_bytes: int = 1) -> tuple[Mapping, GemmTiming]:
    """The heuristic mapping and its timing."""
    m = heuristic(hw, shape, full_rows)
    return m, gemm_timing(hw, shape, m, out_bytes)


def mapper(name: str, objective: str = "latency") -> Mapper:
    """'auto' (tiled_matmul_auto) or 'best' (search on ``objective``)."""
    if name == "auto":
        return auto
    if name == "best":
        return lambda hw, shape, full_rows=False, out_bytes=1: best(hw, shape, objective, full_rows, out_bytes)
    raise TstackError(f"--mapping {name!r} is not one of auto, best")

"""GEMM mappings: capacity legality, Gemmini's tiled_matmul_auto heuristic, and a search for the best legal mapping.

Capacity (Gemmini's tiled_matmul_total_spad_rows / _acc_rows, in DIM-wide rows):
    scratchpad rows (ti·tk + tk·tj)·DIM <= spad_rows (/2 when double-buffered)
    accumulator rows ti·tj·DIM          <= acc_rows  (/2 when double-buffered)
A candidate that breaks a limit raises Infeasible, which the search skips. The best-mapping search tries tile
counts on a geometric grid plus the divisors (below), so its cost is bounded for any GEMM shape.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable

import numpy as np

from tstack.accel.energy import gemm_energy
from tstack.accel.timing import GemmShape, GemmTiming, Mapping, bounds, double_buffered, gemm_timing
from tstack.errors import TstackError
from tstack.hardware.accel import AccelSpec

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

    # Grow J, I, K by one block per round while they fit (gemmini.h). `fits` only gets harder as tiles grow, so once
    # a round grows the set G and the state after one more round of G still fits, every later round grows G alike:
    # jump over those rounds (a bisection) instead of taking them one by one. Same result, bounded time.
    def ok(i: int, j: int, kk: int) -> bool:
        return i <= bI and j <= bJ and kk <= bK and fits(i, j, kk)

    while True:
        grow = [0, 0, 0]  # i, j, k
        if ok(ti, tj + 1, tk):
            tj, grow[1] = tj + 1, 1
        if ok(ti + 1, tj, tk):
            ti, grow[0] = ti + 1, 1
        if ok(ti, tj, tk + 1):
            tk, grow[2] = tk + 1, 1
        if not any(grow):
            return _gemmini_reuse(hw, shape, Mapping(ti, tj, tk))
        lo, hi = 0, 1  # rounds more that still fit: lo fits, hi does not
        while ok(ti + hi * grow[0], tj + hi * grow[1], tk + hi * grow[2]):
            lo, hi = hi, 2 * hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if ok(ti + mid * grow[0], tj + mid * grow[1], tk + mid * grow[2]) else (lo, mid)
        ti, tj, tk = ti + lo * grow[0], tj + lo * grow[1], tk + lo * grow[2]


def _gemmini_reuse(hw: AccelSpec, shape: GemmShape, m: Mapping) -> Mapping:
    """With ``dma.operand_reuse``, the operand reuse gemmini.h's tiled_matmul_outer asks LoopMatmul for ("reuse operand
    if it fits scratchpad"): WS only, ``a_reuse = I0·K0 <= 2`` and ``b_reuse = J0·K0 <= 2``. Each such tile gets its
    own spad id (1 or 2), so it is loaded once and stays while the other loop runs. timing._hits keeps a tile when K
    fits one tile (K0 = 1); with K0 = 2 the two K tiles would alternate slots, which it does not model (their loads
    are counted every time)."""
    if hw.mesh.dataflow != "WS" or not hw.dma.operand_reuse:
        return m
    D = hw.dim
    bI, bJ, bK = shape.blocks(D)
    I0, J0, K0 = -(-bI // m.ti), -(-bJ // m.tj), -(-bK // m.tk)
    return Mapping(m.ti, m.tj, m.tk, m.order, reuse=I0 * K0 <= 2, reuse_inner=J0 * K0 <= 2)


# The best-mapping search tries tile factors on a grid, not every tile count (a 10^12-row GEMM has 10^11 of them).
# Along a dimension of n blocks, with at most `top` blocks fitting: sizes 1, 2, 3, ... in steps of GRID_RATIO and
# the powers of 2; tile counts q on the same geometric grid from the fewest that fit; the few tile counts just above
# the fewest (the largest tiles that fit); the largest divisors of n (no remainder tile); every size taken as the
# even tile of its count, ceil(n/q), as the exhaustive search did. The lists are capped by what the memories hold,
# so every triple tried is legal. A space with more than SEARCH_BUDGET triples is searched on a coarser grid, and
# the coarsest is sampled down to the budget: at most 2·SEARCH_BUDGET + 1 timings (two loop orders and the
# heuristic's mapping) for any shape. On the BERT-base/large GEMMs it finds the exhaustive search's optimum
# (tests/test_accel_mapping.py keeps that search as the reference).
GRID_RATIO = 1.25
SEARCH_BUDGET = 2048
DIVISOR_SCAN = 4096  # divisors of a dimension are looked for among 1..DIVISOR_SCAN, with their cofactors
DIVISORS_KEPT = 8  # the largest divisors that fit are tried
# (ratio, tile counts tried above the fewest, powers of 2) from the finest grid to the coarsest
LEVELS = ((GRID_RATIO, 8, True), (1.5, 4, True), (2.0, 2, True), (4.0, 1, False))
_COARSEST_LIMIT = 64 * SEARCH_BUDGET  # triples listed on the coarsest grid before sampling


def _even(n: int, t: int) -> int:
    """The smallest tile with the same tile count as ``t`` along ``n`` blocks: ceil(n / ceil(n / t))."""
    return -(-n // -(-n // t))


def _divisors(n: int) -> list[int]:
    """Divisors of ``n`` among 1..DIVISOR_SCAN, with their cofactors, ascending."""
    out = set()
    for d in range(1, min(math.isqrt(n), DIVISOR_SCAN) + 1):
        if n % d == 0:
            out.update((d, n // d))
    return sorted(out)


def _grid(n: int, top: int, ratio: float, powers: bool) -> list[int]:
    """Sizes and tile counts on the geometric grid along ``n`` blocks, sizes at most ``top``, as even tiles."""
    sizes = {1, top}
    t = 1.0
    while t <= top:
        sizes.add(int(t))
        t = max(t * ratio, t + 1)
    p = 1
    while powers and p <= top:
        sizes.add(p)
        p *= 2
    q = float(-(-n // top))  # the fewest tiles that fit: ceil(n/q) <= top for every q from here on
    while q <= n:
        sizes.add(-(-n // int(q)))
        q = max(q * ratio, q + 1)
    return sorted({_even(n, t) for t in sizes})


class _Axis:
    """Tile sizes along one dimension for any cap: the grid of the largest cap, cut, plus the cap's own largest tiles."""

    def __init__(self, n: int, cap: int, ratio: float, near: int, powers: bool) -> None:
        self.n, self.near = n, near
        self.grid = _grid(n, min(n, cap), ratio, powers) if cap >= 1 else []
        self.divisors = _divisors(n)
        self.memo: dict[int, list[int]] = {}

    def sizes(self, cap: int) -> list[int]:
        top = min(self.n, cap)
        if top < 1:
            return []
        if top not in self.memo:
            n = self.n
            fewest = -(-n // top)
            out = set(self.grid[:bisect.bisect_right(self.grid, top)])
            out.update(-(-n // q) for q in range(fewest, min(n, fewest + self.near - 1) + 1))
            out.update(self.divisors[:bisect.bisect_right(self.divisors, top)][-DIVISORS_KEPT:])
            self.memo[top] = sorted(out)
        return self.memo[top]


def tile_sizes(n: int, cap: int, ratio: float = GRID_RATIO, near: int = 8, powers: bool = True) -> list[int]:
    """Tile factors the search tries along a dimension of ``n`` blocks when at most ``cap`` blocks fit (ascending)."""
    return _Axis(n, cap, ratio, near, powers).sizes(cap)


def _triples(hw: AccelSpec, shape: GemmShape, full_rows: bool, ratio: float, near: int, powers: bool,
             limit: int) -> list[tuple[int, int, int]]:
    """The (ti, tj, tk) of the grid that the scratchpad and accumulator can hold; stops after ``limit`` + 1."""
    D = hw.dim
    bI, bJ, bK = shape.blocks(D)
    spad, acc = limits(hw)
    spad_b, acc_b = spad // D, acc // D  # legal: (ti + tj)·tk <= spad_b and ti·tj <= acc_b
    cap_ij = min(acc_b, spad_b - 1)
    axis_i, axis_j = _Axis(bI, cap_ij, ratio, near, powers), _Axis(bJ, cap_ij, ratio, near, powers)
    axis_k = _Axis(bK, spad_b // 2, ratio, near, powers)
    out: list[tuple[int, int, int]] = []
    for ti in axis_i.sizes(cap_ij):
        if full_rows:
            tjs = [bJ] if bJ * ti <= acc_b and ti + bJ <= spad_b else []
        else:
            tjs = axis_j.sizes(min(acc_b // ti, spad_b - ti))
        for tj in tjs:
            out.extend((ti, tj, tk) for tk in axis_k.sizes(spad_b // (ti + tj)))
            if len(out) > limit:
                return out
    return out


def candidates(hw: AccelSpec, shape: GemmShape, full_rows: bool = False) -> list[Mapping]:
    """The mappings the best-mapping search times: all legal, at most 2·SEARCH_BUDGET; whole rows when ``full_rows``."""
    bK = shape.blocks(hw.dim)[2]
    for level, (ratio, near, powers) in enumerate(LEVELS):
        last = level == len(LEVELS) - 1
        triples = _triples(hw, shape, full_rows, ratio, near, powers, _COARSEST_LIMIT if last else SEARCH_BUDGET)
        if len(triples) <= SEARCH_BUDGET:
            break
    else:  # even the coarsest grid is too large (a huge memory on a tiny mesh): an even sample of it
        step = len(triples) / SEARCH_BUDGET
        triples = [triples[int(i * step)] for i in range(SEARCH_BUDGET)]
    # The loop order decides which operand is re-read soon enough to hit the L2 (timing._hits), and, when K fits one
    # tile, which stationary operand tile is kept: both orders are tried.
    return [Mapping(ti, tj, tk, order, reuse=tk == bK) for ti, tj, tk in triples for order in ORDERS]


def score(hw: AccelSpec, timing: GemmTiming, objective: str) -> float:
    """The value an objective minimizes: cycles, joules or their product."""
    if objective == "latency":
        return timing.cycles
    joules = gemm_energy(hw, timing).total
    return joules if objective == "energy" else joules * hw.seconds(timing.cycles)


def lower_bounds(hw: AccelSpec, shape: GemmShape, ms: list[Mapping], objective: str, out_bytes: int = 1):
    """A lower bound on each mapping's objective (numpy array): cycles from ``timing.bounds``, joules from its exact
    access counts, EDP their product; less a relative 1e-9 for the different order of the floating-point sums."""
    b = bounds(hw, shape, ms, out_bytes)
    slack = 1 - 1e-9
    if objective == "latency":
        return b.cycles * slack
    joules = gemm_energy(hw, b).total * slack
    return joules if objective == "energy" else joules * hw.seconds(b.cycles * slack)


def search(hw: AccelSpec, shape: GemmShape, pool: list[Mapping], objective: str = "latency",
           out_bytes: int = 1) -> tuple[Mapping, GemmTiming] | None:
    """The legal mapping of ``pool`` with the lowest objective, or None when none is legal.

    Branch and bound: candidates are timed in the order of their lower bounds (``lower_bounds``), and the search stops
    at the first bound above the best score found. Every candidate it skips scores at least its bound, so the result
    is the one timing every candidate gives, ties going to the earlier candidate (tests/test_accel_mapping.py).
    """
    if objective not in OBJECTIVES:
        raise TstackError(f"objective={objective!r} is not one of {', '.join(OBJECTIVES)}")
    found: tuple[float, int, GemmTiming] | None = None
    bound = lower_bounds(hw, shape, pool, objective, out_bytes) if pool else []
    for idx in np.argsort(bound, kind="stable").tolist():
        if found is not None and bound[idx] > found[0]:
            break
        try:
            check(hw, shape, pool[idx])
        except Infeasible:
            continue
        t = gemm_timing(hw, shape, pool[idx], out_bytes)
        v = score(hw, t, objective)
        if found is None or v < found[0] or (v == found[0] and idx < found[1]):
            found = (v, idx, t)
    return None if found is None else (pool[found[1]], found[2])


def best(hw: AccelSpec, shape: GemmShape, objective: str = "latency", full_rows: bool = False,
         out_bytes: int = 1) -> tuple[Mapping, GemmTiming]:
    """The legal mapping with the lowest objective among the heuristic's own and the grid's ``candidates``."""
    try:
        pool: list[Mapping] = [heuristic(hw, shape, full_rows)]
    except Infeasible:
        pool = []
    found = search(hw, shape, pool + candidates(hw, shape, full_rows), objective, out_bytes)
    if found is None:
        raise Infeasible(f"no legal mapping of GEMM {shape.I}×{shape.J}×{shape.K} on {hw.name}"
                         + (" with whole rows in the accumulator" if full_rows else ""))
    return found


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

"""Adaptive resource allocation for the FPGA design (003 §III-D, Algorithm 1), and the exact integer optimum.

Given an operation table (``costmodel.fpga.OpTable``: per operation its work, per-lane resources, memory times),
choose the lanes ``n_i`` of each operation under the LUT, FF, DSP (and BRAM) budgets:

- ``uniform``: the same ``n`` for every operation, as large as the budgets allow (003's baseline design, §VI-D).
- ``slsqp``: Algorithm 1 lines 1–5: minimize Σ latᵢ/nᵢ subject to Σ resᵢ·nᵢ ≤ budget with scipy's SLSQP, then
  round down to integers, fill the slack greedily (the lane that saves the most compute time per share of the
  scarcest resource, while one fits) and repair the rounding by exchanges (one more lane here for the fewest lanes
  that make room elsewhere, while that saves time).
- ``slsqp+rebalance``: then lines 6–14, from the SLSQP design and from the uniform one (the better is kept): find
  the most memory-bound operation (largest prefetch − compute), take its lanes down to the fewest that still hide
  behind its prefetch, mask it out, give the freed resources to the others (SLSQP again over the unmasked operations,
  rounded, filled and repaired on the modelled latency), until no unmasked operation is memory-bound. Each round
  masks one operation, so it stops within the number of operations.
- ``exact``: the integer optimum of the modelled latency (stalls and the pipeline fill included) as a multiple-choice
  knapsack solved by scipy's ``milp`` (HiGHS) to a zero gap: a binary per operation and useful lane count. Where the
  time limit stops HiGHS first, the best design found and the proven lower bound are returned, marked unproven.

A table whose minimum design (one lane per operation) exceeds a budget raises ``Infeasible``, the searches' exception.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp, minimize

from tstack.accel.mapping import Infeasible
from tstack.costmodel.fpga import OpTable
from tstack.errors import TstackError
from tstack.hardware.fpga import RESOURCES

METHODS = ("uniform", "slsqp", "slsqp+rebalance", "exact")
EXACT_TIME_LIMIT_S = 60.0
PRUNE_ROUNDS = 8  # rounds of bound tightening before the milp
MAX_EXCHANGES = 200  # rounding repairs per solve; each saves time, so this only bounds a pathological table


@dataclass(frozen=True)
class Allocation:
    """Lanes per operation chosen by ``method``, the modelled latency, rebalancing rounds and masked operations."""

    method: str
    lanes: tuple[int, ...]
    seconds: float
    rounds: int = 0
    masked: tuple[str, ...] = ()
    solve_seconds: float = 0.0
    proven: bool | None = None  # exact only: the milp proved the optimum (else its time limit stopped it)
    bound_seconds: float | None = None  # exact only: the proven lower bound of the latency


def check_feasible(t: OpTable) -> None:
    """Raise Infeasible when one lane per operation does not fit: no design exists."""
    need = t.usage(np.ones(t.k))
    over = [f"{r} needs {need[j]:.0f} > {t.budget[j]:.0f}" for j, r in enumerate(RESOURCES) if need[j] > t.budget[j] + 1e-9]
    if over:
        raise Infeasible(f"{t.label or 'operation table'}: one lane per operation does not fit ({'; '.join(over)})")


def uniform(t: OpTable) -> np.ndarray:
    """The largest common lane count that fits every budget."""
    check_feasible(t)
    total = t.cost.sum(axis=0)
    caps = np.where(total > 0, t.budget / np.where(total > 0, total, 1.0), np.inf)
    return np.full(t.k, max(1, int(np.floor(caps.min() + 1e-9))), dtype=np.int64)


def _op_seconds(t: OpTable, n: np.ndarray, modelled: bool) -> np.ndarray:
    """Per operation: compute seconds (Algorithm 1's objective) or the modelled seconds (spill + compute + stall)."""
    compute = t.compute_s(n)
    return t.spill_s + np.maximum(compute, t.memory_s) if modelled else compute


def _continuous(t: OpTable, free: np.ndarray, budget: np.ndarray, start: np.ndarray) -> np.ndarray:
    """SLSQP: minimize Σ work_i/x_i over the free operations within ``budget``; x ≥ 1."""
    a = t.work[free] / t.clock_hz
    cost = t.cost[free]
    scale = np.where(budget > 0, budget, 1.0)
    rows = [j for j in range(cost.shape[1]) if cost[:, j].any()]
    f0 = float(np.sum(a / start))

    def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
        return float(np.sum(a / x)) / f0, -a / x**2 / f0

    cons = [{"type": "ineq", "fun": lambda x, j=j: (budget[j] - cost[:, j] @ x) / scale[j],
             "jac": lambda x, j=j: -cost[:, j] / scale[j]} for j in rows]
    spare = budget - cost.sum(axis=0)
    upper = [1.0 + min((spare[j] / cost[i, j] for j in rows if cost[i, j] > 0), default=1e12) for i in range(len(a))]
    res = minimize(objective, np.asarray(start, dtype=float), jac=True, method="SLSQP", constraints=cons,
                   bounds=list(zip([1.0] * len(a), upper)), options={"maxiter": 500, "ftol": 1e-12})
    x = np.clip(res.x, 1.0, upper)
    over = cost.T @ x - budget
    if np.any(over > 1e-6 * scale):  # SLSQP stopped outside the budget: fall back to its feasible start
        x = np.asarray(start, dtype=float)
    return x


def _fill(t: OpTable, n: np.ndarray, free: np.ndarray, modelled: bool) -> np.ndarray:
    """Add lanes one at a time to the free operation that saves the most seconds per share of the scarcest resource
    it uses, while any lane still fits and saves time."""
    n = n.copy()
    idx = np.flatnonzero(free)
    spare = t.budget - t.usage(n)
    share = np.max(t.cost[idx] / np.where(t.budget > 0, t.budget, 1.0), axis=1)
    share = np.where(share > 0, share, 1e-12)
    while True:
        now = _op_seconds(t, n, modelled)[idx]
        bumped = n.copy()
        bumped[idx] += 1
        gain = now - _op_seconds(t, bumped, modelled)[idx]
        fits = np.all(t.cost[idx] <= spare + 1e-9, axis=1) & (gain > 0)
        if not fits.any():
            return n
        best = idx[np.argmax(np.where(fits, gain / share, -np.inf))]
        n[best] += 1
        spare -= t.cost[best]


def _exchange(t: OpTable, n: np.ndarray, free: np.ndarray, modelled: bool) -> np.ndarray:
    """Repair the rounding: while it saves time, give one lane to a free operation and take from another free one
    the fewest lanes that make room for it (the best such move each time), then fill the slack again."""
    n = n.copy()
    idx = np.flatnonzero(free)
    for _ in range(MAX_EXCHANGES):
        spare = t.budget - t.usage(n)
        best, best_gain = None, 0.0
        now = _op_seconds(t, n, modelled)
        for i in idx:
            gain_i = now[i] - _one(t, i, n[i] + 1, modelled)
            short = t.cost[i] - spare
            for j in idx:
                if j == i:
                    continue
                need = short > 1e-9
                if np.any(need & (t.cost[j] <= 0)):
                    continue
                take = int(np.max(np.ceil(short[need] / t.cost[j][need] - 1e-9), initial=0))
                if n[j] - take < 1:
                    continue
                gain = gain_i + now[j] - _one(t, j, n[j] - take, modelled)
                if gain > best_gain + 1e-12 * now.sum():
                    best, best_gain = (i, j, take), gain
        if best is None:
            return n
        i, j, take = best
        n[i] += 1
        n[j] -= take
        n = _fill(t, n, free, modelled)
    return n


def _one(t: OpTable, i: int, lanes: int, modelled: bool) -> float:
    """_op_seconds of operation ``i`` alone at ``lanes``."""
    compute = (math.ceil(t.work[i] / lanes) + t.depth[i]) / t.clock_hz
    return float(t.spill_s[i] + max(compute, t.memory_s[i])) if modelled else compute


def _solve(t: OpTable, n: np.ndarray, free: np.ndarray, modelled: bool) -> np.ndarray:
    """SLSQP over the free operations (the others keep their lanes), rounded down, filled greedily and repaired.

    The point ``n`` itself, filled, is the other candidate: the better of the two is returned, so a
    solve never ends worse than where it started (rounding can cost more than SLSQP gains on small budgets).
    """
    budget = t.budget - t.usage(np.where(free, 0, n))
    x = _continuous(t, free, budget, n[free].astype(float))
    rounded = n.copy()
    rounded[free] = np.maximum(1, np.floor(x + 1e-9)).astype(np.int64)
    candidates = [_exchange(t, _fill(t, rounded, free, modelled), free, modelled), _fill(t, n, free, modelled)]
    return min(candidates, key=lambda m: float(_op_seconds(t, m, modelled).sum()))


def slsqp(t: OpTable) -> np.ndarray:
    """Algorithm 1 lines 2–5: the SLSQP optimum of Σ lat_i/n_i from the uniform design, rounded down and filled."""
    return _solve(t, uniform(t), np.ones(t.k, dtype=bool), modelled=False)


def rebalance(t: OpTable, n: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Algorithm 1 lines 6–14 from ``n``: the rebalanced lanes and the operations masked, in order."""
    n = np.asarray(n, dtype=np.int64).copy()
    free = np.ones(t.k, dtype=bool)
    masked: list[int] = []
    while True:
        gap = t.memory_s - t.compute_s(n)
        gap = np.where(free, gap, -np.inf)
        i = int(np.argmax(gap))
        if gap[i] <= 0:
            return n, masked
        hide = math.floor(t.memory_s[i] * t.clock_hz - t.depth[i])  # whole cycles of work hidden by the prefetch
        need = math.ceil(t.work[i] / hide) if hide >= 1 else n[i]
        n[i] = max(1, min(n[i], need))
        free[i] = False
        masked.append(i)
        if free.any():
            n = _solve(t, n, free, modelled=True)


def _choices(t: OpTable, i: int, cap: int) -> tuple[np.ndarray, np.ndarray]:
    """Lane counts 1..cap of operation ``i`` that save time over every smaller count, and their modelled seconds."""
    v = np.arange(1, max(1, min(cap, int(np.ceil(t.work[i])))) + 1)
    compute = (np.ceil(t.work[i] / v) + t.depth[i]) / t.clock_hz
    sec = t.spill_s[i] + np.maximum(compute, t.memory_s[i])
    keep = np.concatenate(([True], sec[1:] < np.minimum.accumulate(sec)[:-1]))
    return v[keep], sec[keep]


class Exact(NamedTuple):
    """The milp's design; whether it is proven optimal (else the time limit stopped it) and the proven lower bound."""

    lanes: np.ndarray
    proven: bool
    bound_seconds: float


def exact(t: OpTable, time_limit_s: float = EXACT_TIME_LIMIT_S, heuristic: np.ndarray | None = None) -> Exact:
    """The integer lanes that minimize the modelled latency under the budgets (milp, zero gap, or the best design
    and the proven bound when ``time_limit_s`` runs out first).

    Choices that cannot be optimal are pruned first, which keeps the optimum: with ``ub`` the latency of the SLSQP +
    rebalancing design (``heuristic``: its lanes, where the caller has them), an operation's choice slower than ``ub``
    minus the other operations' fastest times is out, which raises each operation's minimum lanes, which lowers the
    others' largest counts; a few rounds of this.
    """
    check_feasible(t)
    if heuristic is None:
        heuristic = np.array(allocate(t, "slsqp+rebalance").lanes)
    ub = float(_op_seconds(t, heuristic, True).sum())
    low = np.ones(t.k, dtype=np.int64)
    for _ in range(PRUNE_ROUNDS):
        table = []
        for i in range(t.k):
            spare = t.budget - t.usage(low) + t.cost[i] * low[i]
            cap = min((int(np.floor(spare[j] / t.cost[i, j] + 1e-9)) for j in range(len(RESOURCES)) if t.cost[i, j] > 0),
                      default=int(t.work[i]))
            table.append(_choices(t, i, cap))
        fastest = np.array([sec.min() for _, sec in table])
        slack = ub - (fastest.sum() - fastest) + 1e-12 * ub
        table = [(v[sec <= slack[i]], sec[sec <= slack[i]]) for i, (v, sec) in enumerate(table)]
        new_low = np.array([v.min() for v, _ in table], dtype=np.int64)
        if np.array_equal(new_low, low):
            break
        low = new_low
    ops = np.concatenate([np.full(len(v), i) for i, (v, _) in enumerate(table)])
    lanes = np.concatenate([v for v, _ in table]).astype(float)
    sec = np.concatenate([s for _, s in table])
    one = np.zeros((t.k, len(ops)))
    one[ops, np.arange(len(ops))] = 1.0
    use = (t.cost[ops] * lanes[:, None]).T
    # in cycles above each operation's fastest choice: distinct designs differ by ≥ 1, far above HiGHS's absolute gap
    fastest = np.array([s.min() for _, s in table])
    res = milp((sec - fastest[ops]) * t.clock_hz, integrality=np.ones(len(ops)), bounds=Bounds(0, 1),
               constraints=[LinearConstraint(one, 1, 1), LinearConstraint(use, -np.inf, t.budget)],
               options={"mip_rel_gap": 0.0, "time_limit": time_limit_s})
    if res.x is None:
        raise TstackError(f"exact allocation of {t.label or 'the table'}: milp found no design within "
                          f"{time_limit_s:g} s ({res.message})")
    pick = res.x > 0.5
    n = np.zeros(t.k, dtype=np.int64)
    n[ops[pick]] = lanes[pick].astype(np.int64)
    if not t.fits(n) or float(_op_seconds(t, n, True).sum()) > ub:  # HiGHS's tolerances; the bound design is exact
        n = heuristic
    bound = (float(res.mip_dual_bound) / t.clock_hz + fastest.sum()) * t.layers
    return Exact(n, res.status == 0, min(bound, t.seconds(n)) if res.status == 0 else bound)


def allocate(t: OpTable, method: str) -> Allocation:
    """Lanes per operation by ``method`` (one of METHODS), with the modelled latency."""
    start = time.perf_counter()
    rounds, masked, proven, bound = 0, (), None, None
    if method == "uniform":
        n = uniform(t)
    elif method == "slsqp":
        n = slsqp(t)
    elif method == "slsqp+rebalance":
        n, order = min((rebalance(t, m) for m in (slsqp(t), uniform(t))), key=lambda r: t.seconds(r[0]))
        rounds, masked = len(order), tuple(t.names[i] for i in order)
    elif method == "exact":
        n, proven, bound = exact(t)
    else:
        raise TstackError(f"--method {method!r} is not one of {', '.join(METHODS)}")
    return Allocation(method, tuple(int(x) for x in n), t.seconds(n), rounds, masked, time.perf_counter() - start,
                      proven, bound)


@dataclass(frozen=True)
class Cross:
    """A model run on the design made for another: its own allocation, the other's, and the latency on the latter."""

    own: Allocation
    designed: Allocation
    seconds_on_design: float

    @property
    def relative(self) -> float:
        """Performance on the other's design as a fraction of the model's own optimum (003 §VI-D: 0.47×)."""
        return self.own.seconds / self.seconds_on_design


def cross(run: OpTable, design_for: OpTable, method: str = "slsqp+rebalance") -> Cross:
    """Run the operations of ``run`` with the lanes ``method`` chose for ``design_for`` (the mismatch penalty)."""
    if run.names != design_for.names or not np.array_equal(run.cost, design_for.cost):
        raise Infeasible(f"{run.label} and {design_for.label} have different operations or lanes; one design cannot "
                         "run both")
    designed = allocate(design_for, method)
    if not run.fits(np.array(designed.lanes)):
        raise Infeasible(f"the design for {design_for.label} does not fit the budget of {run.label}")
    return Cross(allocate(run, method), designed, run.seconds(np.array(designed.lanes)))

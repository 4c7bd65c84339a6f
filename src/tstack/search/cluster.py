"""Search over parallel layouts: every legal (dp, tp, pp, interleave, micro-batch, recompute, sequence parallel, ZeRO,
overlap, and expert parallelism for a Mixture-of-Experts model) for a model on a number of devices, costed by
``costmodel.cluster``; layouts that do not fit the device's memory are dropped; the rest ranked by time per iteration,
with the Pareto set of time against memory.

What repeats is costed once: a family (tp, micro-batch, recompute, sequence parallel, ep) builds and costs one workload,
and all its layouts (pp, interleave, dp, ZeRO stage, overlap) are composed at once with numpy
(``cluster.compose``). Families are spread over the project's parallel map (processes, or Ray).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from tstack.costmodel.cluster import RECOMPUTE, ZERO_STAGES, Layout, compose, family, layout_problems, total_layers, tp_problems
from tstack.errors import SpecError
from tstack.hardware.device import DeviceSpec
from tstack.hardware.network import NetworkSpec
from tstack.parallel import pmap
from tstack.spec import ModelSpec, RunSpec

MAX_GPUS = 1 << 20
FIELDS = ("dp", "tp", "pp", "interleave", "micro_batch", "recompute", "seq_parallel", "zero", "overlap", "ep")


def divisors(n: int) -> list[int]:
    small = [d for d in range(1, int(n**0.5) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


@dataclass(frozen=True)
class SearchSpace:
    """The devices and batch to lay out, and which choices to try."""

    gpus: int
    global_batch: int
    recompute: tuple[str, ...] = RECOMPUTE
    zero: tuple[int, ...] = ZERO_STAGES
    max_micro_batch: int = 0  # 0: any divisor of the per-replica batch


def families(model: ModelSpec, seq: int, space: SearchSpace) -> list[tuple[int, int, str, bool, int]]:
    """(tp, micro_batch, recompute, seq_parallel, ep) of every family with at least one legal layout; ep runs over
    the divisors of the model's experts that divide some dp (1 for a dense model)."""
    out = []
    L = total_layers(model)
    for tp in divisors(space.gpus):
        if tp_problems(model, tp):
            continue
        mbs: dict[int, set[int]] = {}  # micro-batch -> the ep degrees some dp of it allows
        for pp in divisors(space.gpus // tp):
            dp = space.gpus // (tp * pp)
            if L % pp == 0 and space.global_batch % dp == 0:
                eps = [e for e in divisors(dp) if model.experts % e == 0] if model.experts else [1]
                for mb in divisors(space.global_batch // dp):
                    mbs.setdefault(mb, set()).update(eps)
        for mb in sorted(mbs):
            if space.max_micro_batch and mb > space.max_micro_batch:
                continue
            for rc in space.recompute:
                for sp in ((False, True) if tp > 1 and seq % tp == 0 else (False,)):
                    out += [(tp, mb, rc, sp, ep) for ep in sorted(mbs[mb])]
    return out


def family_layouts(model: ModelSpec, space: SearchSpace, tp: int, mb: int, ep: int = 1) -> dict[str, np.ndarray]:
    """Arrays of the cheap choices (pp, interleave, dp, zero, overlap) legal for one family."""
    L = total_layers(model)
    rows = []
    for pp in divisors(space.gpus // tp):
        dp = space.gpus // (tp * pp)
        if L % pp or space.global_batch % (dp * mb) or dp % ep:
            continue
        for v in (divisors(L // pp) if pp > 1 else [1]):
            for zero in (space.zero if dp > 1 else (0,)):
                for ovl in ((0, 1) if dp > 1 else (1,)):
                    rows.append((pp, v, dp, space.global_batch // (dp * mb), zero, ovl))
    arr = np.array(rows, dtype=np.int64).reshape(-1, 6)
    return {k: arr[:, i] for i, k in enumerate(("pp", "interleave", "dp", "micro_batches", "zero", "overlap"))}


def _evaluate_family(key: tuple[int, int, str, bool, int], model: ModelSpec, run: RunSpec, device: DeviceSpec,
                     network: NetworkSpec, space: SearchSpace) -> dict[str, Any]:
    tp, mb, rc, sp, ep = key
    lay = family_layouts(model, space, tp, mb, ep)
    if not len(lay["pp"]):
        return {"key": key, "n": 0}
    fam = family(model, run, device, tp, mb, rc, sp, ep=ep)
    v = compose(fam, network, lay["dp"], tp, lay["pp"], lay["interleave"], lay["micro_batches"], lay["zero"],
                lay["overlap"], ep)
    return {"key": key, "n": len(lay["pp"]), **lay, "seconds": v["seconds"],
            "memory": v["memory"]}


@dataclass(frozen=True)
class SearchResult:
    """Every layout evaluated (as columns), and the ones that fit, ranked."""

    evaluated: int
    table: dict[str, np.ndarray]  # the layouts that fit, fastest first; columns FIELDS + seconds, memory, pareto

    @property
    def fitting(self) -> int:
        return len(self.table["seconds"])

    def row(self, i: int) -> dict[str, Any]:
        return {k: self.table[k][i].item() for k in self.table}

    def rows(self, top: int = 0) -> list[dict[str, Any]]:
        return [self.row(i) for i in range(min(self.fitting, top) if top else self.fitting)]

    def top_and_pareto(self, top: int) -> list[int]:
        """Ranks (0-based) of the ``top`` fastest layouts and of the Pareto set, fastest first."""
        return np.flatnonzero((np.arange(self.fitting) < top) | self.table["pareto"]).tolist()


def search(model: ModelSpec, run: RunSpec, device: DeviceSpec, network: NetworkSpec, space: SearchSpace,
           executor: str = "process", workers: int | None = None, progress: Any = None,
           keys: list[tuple[int, int, str, bool, int]] | None = None) -> SearchResult:
    """Evaluate every legal layout; keep those that fit the device memory, ranked by seconds per iteration.
    ``keys``: the families to evaluate when the caller has them already (``families(model, run.seq, space)``)."""
    problems = []
    if not 1 <= space.gpus <= MAX_GPUS:
        problems.append(f"gpus={space.gpus} must be in [1, {MAX_GPUS}]")
    if space.global_batch < 1:
        problems.append(f"global_batch={space.global_batch} must be ≥ 1")
    if problems:
        raise SpecError(problems, "search")
    if keys is None:
        keys = families(model, run.seq, space)
    fn = partial(_evaluate_family, model=model, run=run, device=device, network=network, space=space)
    parts = [p for p in pmap(fn, keys, executor=executor, workers=workers, progress=progress) if p["n"]]
    evaluated = sum(p["n"] for p in parts)
    cols: dict[str, list[np.ndarray]] = {k: [] for k in FIELDS + ("seconds", "memory")}
    for p in parts:
        tp, mb, rc, sp, ep = p["key"]
        ones = np.ones(p["n"], dtype=np.int64)
        fit = p["memory"] <= device.memory_capacity
        for k, value in (("tp", tp * ones), ("micro_batch", mb * ones), ("ep", ep * ones), ("recompute", np.array([rc] * p["n"])),
                         ("seq_parallel", np.full(p["n"], sp)), ("overlap", np.where(p["overlap"] == 1, "layer", "none"))):
            cols[k].append(value[fit])
        for k in ("dp", "pp", "interleave", "zero", "seconds", "memory"):
            cols[k].append(p[k][fit])
    table = {k: np.concatenate(v) if v else np.array([]) for k, v in cols.items()}
    order = np.argsort(table["seconds"], kind="stable")
    table = {k: v[order] for k, v in table.items()}
    table["pareto"] = pareto(table["seconds"], table["memory"])
    return SearchResult(evaluated, table)


def pareto(seconds: np.ndarray, memory: np.ndarray) -> np.ndarray:
    """Whether each point (sorted by seconds) is on the Pareto front of (seconds, memory), both minimized."""
    front = np.zeros(len(seconds), dtype=bool)
    best = np.inf
    for i in range(len(seconds)):
        if memory[i] < best:
            front[i] = True
            best = memory[i]
    return front


def layout_of(row: dict[str, Any], global_batch: int) -> Layout:
    return Layout(dp=row["dp"], tp=row["tp"], pp=row["pp"], interleave=row["interleave"], micro_batch=row["micro_batch"],
                  global_batch=global_batch, recompute=row["recompute"], seq_parallel=bool(row["seq_parallel"]),
                  zero=row["zero"], overlap=row["overlap"], ep=row.get("ep", 1))


def legal(model: ModelSpec, row: dict[str, Any], space: SearchSpace, seq: int) -> list[str]:
    """The problems of a search row as a layout (empty when legal)."""
    lay = layout_of(row, space.global_batch)
    return layout_problems(model, lay, seq) + ([] if lay.gpus == space.gpus else [f"uses {lay.gpus} devices"])

"""Design-space exploration: scratchpad/accumulator split at fixed total SRAM, mesh size and DMA width (000 §II-3).

Each design point is the base configuration with those fields changed; points that break a rule of the hardware
description (SpecError) or cannot hold a mapping or a row (Infeasible) are kept as infeasible, with the reason.
The points are costed with tstack's parallel map; the Pareto set is over (latency, energy).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from tstack.accel.mapping import OBJECTIVES, Infeasible
from tstack.accel.model import run
from tstack.errors import SpecError, TstackError
from tstack.hardware.accel import AccelSpec, KiB
from tstack.parallel import pmap
from tstack.spec import ModelSpec

_SIZE = re.compile(r"^\s*([0-9]{1,12})\s*(B|KiB|MiB|GiB|kB|KB|MB|GB)?\s*$")
_SPLIT = re.compile(r"^\s*([0-9]{1,9})\s*:\s*([0-9]{1,9})\s*$")
_UNIT = {None: 1, "B": 1, "KiB": KiB, "kB": KiB, "KB": KiB, "MiB": KiB**2, "MB": KiB**2, "GiB": KiB**3, "GB": KiB**3}
MAX_SRAM_BYTES = 2 * KiB**3  # scratchpad + accumulator: each may have at most 1 GiB (tstack.hardware.accel)
MAX_SPLITS = 1024


@dataclass(frozen=True)
class Point:
    """One design: scratchpad and accumulator bytes, mesh size, DMA bus bytes per cycle."""

    spad_bytes: int
    acc_bytes: int
    dim: int
    dma_bytes: int

    @property
    def label(self) -> str:
        return f"{self.spad_bytes // KiB}:{self.acc_bytes // KiB} KiB {self.dim}x{self.dim} dma{self.dma_bytes}"


@dataclass(frozen=True)
class Outcome:
    """Latency (s), energy (J) and EDP of a design point; ``reason`` says why an infeasible one failed."""

    point: Point
    latency_s: float = float("inf")
    joules: float = float("inf")
    matmul_s: float = float("inf")
    reason: str = ""

    @property
    def feasible(self) -> bool:
        return not self.reason

    @property
    def edp(self) -> float:
        return self.latency_s * self.joules

    def objective(self, name: str) -> float:
        if name not in OBJECTIVES:
            raise TstackError(f"--objective {name!r} is not one of {', '.join(OBJECTIVES)}")
        return {"latency": self.latency_s, "energy": self.joules, "edp": self.edp}[name]


def parse_size(option: str, text: str, lo: int = 2 * KiB, hi: int = MAX_SRAM_BYTES) -> int:
    """'320KiB' -> 327680 bytes (kB and KB read as KiB, as 000 writes them), in [lo, hi]."""
    m = _SIZE.match(text)
    if not m:
        raise SpecError([f"{option}={text[:40]!r} must be a size such as 320KiB, 64kB or 1MiB"])
    n = int(m.group(1)) * _UNIT[m.group(2)]
    if not lo <= n <= hi:
        raise SpecError([f"{option}={text[:40]!r} is {n} bytes; it must be in [{lo}, {hi}] bytes"])
    return n


def parse_splits(text: str, total: int) -> list[tuple[int, int]]:
    """'64:256,128:192' (KiB) -> [(scratchpad bytes, accumulator bytes)], each pair summing to ``total``."""
    parts = text.split(",")
    if len(parts) > MAX_SPLITS:
        raise SpecError([f"--split has {len(parts)} entries; at most {MAX_SPLITS} are allowed"])
    out = []
    for part in parts:
        m = _SPLIT.match(part)
        if not m:
            raise SpecError([f"--split entry {part[:40]!r} must be SPAD:ACC in KiB, e.g. 64:256"])
        spad, acc = int(m.group(1)) * KiB, int(m.group(2)) * KiB
        if spad + acc != total:
            raise SpecError([f"--split {part.strip()} sums to {(spad + acc) // KiB} KiB; --sram-total is {total // KiB} KiB"])
        out.append((spad, acc))
    return out


def design_points(splits: list[tuple[int, int]], dims: list[int], dma_widths: list[int]) -> list[Point]:
    return [Point(s, a, d, w) for s, a in splits for d in dims for w in dma_widths]


def configure(base: AccelSpec, p: Point) -> AccelSpec:
    """The base hardware with the point's memory split, mesh size and DMA width."""
    return base.changed(name=f"{base.name}[{p.label}]", scratchpad={"bytes": p.spad_bytes}, accumulator={"bytes": p.acc_bytes},
                        mesh={"rows": p.dim, "cols": p.dim}, dma={"bus_bytes_per_cycle": p.dma_bytes})


def evaluate(p: Point, base: AccelSpec, model: str | ModelSpec, seq: int, schedule: str) -> Outcome:
    """Cost one design point; rule breaks and infeasible mappings become an infeasible Outcome."""
    try:
        r = run(model, seq, configure(base, p), schedule)
    except (SpecError, Infeasible) as e:
        return Outcome(p, reason=str(e))
    return Outcome(p, r.seconds, r.joules, r.by_category()["matmul"])


def explore(base: AccelSpec, model: str | ModelSpec, seq: int, points: list[Point], schedule: str = "non-fused",
            executor: str = "process", workers: int | None = None,
            progress: Callable[[int], None] | None = None) -> list[Outcome]:
    """Every point costed, in order, over tstack's parallel map; ``progress(n)`` as points finish."""
    return pmap(partial(evaluate, base=base, model=model, seq=seq, schedule=schedule), points, executor=executor,
                workers=workers, progress=progress)


def pareto(outcomes: list[Outcome]) -> list[bool]:
    """Whether each feasible outcome is not dominated in (latency, energy) by another."""
    def dominated(o: Outcome) -> bool:
        return any(q.feasible and q.latency_s <= o.latency_s and q.joules <= o.joules
                   and (q.latency_s < o.latency_s or q.joules < o.joules) for q in outcomes)
    return [o.feasible and not dominated(o) for o in outcomes]

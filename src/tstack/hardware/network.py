"""NetworkSpec: the links between devices as data (topology levels with bandwidth, latency and efficiency), and the
time of the collectives a parallel layout launches (ring, tree and hierarchical algorithms, exact volume factors).

A network has levels from the innermost out: level 0 joins the ``size`` devices of one node (NVLink/NVSwitch, or
PCIe 4.0 as 002 §5.1 assumes); the last level joins every node (InfiniBand, Ethernet). ``bandwidth`` is bytes/s one
device can send in one direction at that level, ``efficiency`` the fraction a collective library attains.

Volume factors (bytes each device sends per byte of the buffer, Patarasuk & Yuan 2009; Thakur et al. 2005):
all-reduce 2(n−1)/n, reduce-scatter (n−1)/n, all-gather (n−1)/n, all-to-all (n−1)/n, point-to-point 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from tstack import checks
from tstack.errors import SpecError
from tstack.loader import load_spec, presets_in, show, unknown_fields
from tstack.spec import preset_dir

COLLECTIVES = ("all-reduce", "reduce-scatter", "all-gather", "all-to-all", "p2p")
ALGORITHMS = ("ring", "tree", "hierarchical")


@dataclass(frozen=True)
class Level:
    """One level of the topology: ``size`` devices share it (0: every device of the cluster)."""

    name: str
    size: int
    bandwidth: float  # byte/s per device per direction
    latency: float  # s per step of a collective
    efficiency: float  # fraction of ``bandwidth`` a collective library attains

    def __post_init__(self) -> None:
        problems: list[str] = []
        checks.text(problems, "level.name", self.name)
        checks.integer(problems, f"level {self.name}.size", self.size, 0, 1 << 24)
        checks.number(problems, f"level {self.name}.bandwidth", self.bandwidth, 1e6, 1e15)
        checks.number(problems, f"level {self.name}.latency", self.latency, 0.0, 1.0)
        checks.number(problems, f"level {self.name}.efficiency", self.efficiency, 1e-3, 1.0)
        if problems:
            raise SpecError(problems, "network level")

    @property
    def rate(self) -> float:
        """Attained byte/s per device per direction."""
        return self.bandwidth * self.efficiency


@dataclass(frozen=True)
class NetworkSpec:
    """Levels from the innermost (a node) out; the last level spans the whole cluster."""

    name: str
    levels: tuple[Level, ...]
    algorithm: str = "hierarchical"  # for groups that cross levels; a group inside one level uses the ring
    description: str = ""
    sources: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        problems: list[str] = []
        checks.text(problems, "name", self.name)
        checks.choice(problems, "algorithm", self.algorithm, ALGORITHMS)
        if not self.levels:
            problems.append("levels must list at least one level")
        sizes = [lv.size for lv in self.levels]
        if sizes and sizes[-1] != 0:
            problems.append(f"the last level ({self.levels[-1].name}) must have size 0 (the whole cluster)")
        inner = sizes[:-1]
        if any(s < 1 for s in inner) or any(b % a for a, b in zip(inner, inner[1:])):
            problems.append(f"inner level sizes {inner} must be ≥ 1, each dividing the next")
        if problems:
            raise SpecError(problems, f"network {show(self.name, 40)}")

    def level_of(self, span: int) -> int:
        """Index of the innermost level whose groups hold ``span`` consecutive devices."""
        for i, lv in enumerate(self.levels):
            if lv.size == 0 or span <= lv.size:
                return i
        return len(self.levels) - 1


def volume_factor(collective: str, n: int, algorithm: str = "ring") -> float:
    """Bytes each device sends per byte of the buffer (the exact factors of the module doc; tree all-reduce: 2)."""
    if collective not in COLLECTIVES:
        raise SpecError([f"collective={show(collective)} is not one of {', '.join(COLLECTIVES)}"])
    if n <= 1:
        return 0.0
    if collective == "p2p":
        return 1.0
    if collective == "all-reduce":
        return 2.0 if algorithm == "tree" else 2.0 * (n - 1) / n
    return (n - 1) / n


def _steps(collective: str, n: int, algorithm: str) -> int:
    if collective == "p2p":
        return 1
    if algorithm == "tree" and collective == "all-reduce":
        return 2 * math.ceil(math.log2(n))  # reduce up, broadcast down a binary tree
    return (2 if collective == "all-reduce" else 1) * (n - 1)


def _flat(collective: str, n: int, nbytes: float, level: Level, algorithm: str) -> float:
    if n <= 1 or nbytes <= 0:
        return 0.0
    algo = "tree" if algorithm == "tree" and collective == "all-reduce" else "ring"
    return _steps(collective, n, algo) * level.latency + volume_factor(collective, n, algo) * nbytes / level.rate


def collective_seconds(net: NetworkSpec, collective: str, nbytes: float, n: int, stride: int = 1,
                       algorithm: str | None = None) -> float:
    """Time of one collective over ``n`` devices whose ranks are ``stride`` apart, on a buffer of ``nbytes``.

    Inside one level the ring (or tree) runs at that level's rate. A group crossing levels runs, under the
    hierarchical algorithm, a reduce-scatter inside each node, the collective across nodes on 1/n_local of the
    buffer (the n_local devices of a node each on their own link, in parallel) and an all-gather inside the node;
    under ring or tree the whole group runs at the slowest level's rate.
    """
    if n <= 1 or nbytes <= 0:
        return 0.0
    algorithm = algorithm or net.algorithm
    if algorithm not in ALGORITHMS:
        raise SpecError([f"algorithm={show(algorithm)} is not one of {', '.join(ALGORITHMS)}"])
    outer = net.levels[net.level_of((n - 1) * stride + 1)]
    if collective == "p2p":
        return outer.latency + nbytes / outer.rate
    inner_level = net.levels[0]
    local = max(1, min(n, inner_level.size // stride)) if inner_level.size and stride < inner_level.size else 1
    if algorithm != "hierarchical" or local == 1 or local == n:
        return _flat(collective, n, nbytes, outer, algorithm)
    nodes = n // local
    if collective == "all-reduce":
        return (_flat("reduce-scatter", local, nbytes, inner_level, "ring")
                + _flat("all-reduce", nodes, nbytes / local, outer, "ring")
                + _flat("all-gather", local, nbytes, inner_level, "ring"))
    if collective in ("reduce-scatter", "all-gather"):
        return _flat(collective, local, nbytes, inner_level, "ring") + _flat(collective, nodes, nbytes / local, outer, "ring")
    return _flat(collective, n, nbytes, outer, "ring")  # all-to-all: every pair talks; the outer links bound it


def network_from_dict(data: Any, where: str) -> NetworkSpec:
    if not isinstance(data, dict):
        raise SpecError([f"expected a mapping of network fields, got {type(data).__name__}"], where)
    known = {f.name for f in fields(NetworkSpec)}
    problems = unknown_fields(data, known, lambda k: show(k, 40))
    problems += [f"missing field {k!r}" for k in ("name", "levels") if k not in data]
    levels = data.get("levels", [])
    if not isinstance(levels, list) or not all(isinstance(lv, dict) for lv in levels):
        problems.append("levels must be a list of mappings (name, size, bandwidth, latency, efficiency)")
        levels = []
    level_known = {f.name for f in fields(Level)}
    for i, lv in enumerate(levels):
        problems += unknown_fields(lv, level_known, lambda k, i=i: f"levels[{i}].{show(k, 40)}")
        problems += [f"levels[{i}]: missing field {k!r}" for k in level_known if k not in lv]
    if problems:
        raise SpecError(problems, where)
    sources = data.get("sources", ())
    try:
        return NetworkSpec(name=data["name"], levels=tuple(Level(**lv) for lv in levels),
                           algorithm=data.get("algorithm", "hierarchical"), description=data.get("description", ""),
                           sources=tuple(sources) if isinstance(sources, list) else sources)
    except SpecError as e:
        raise SpecError(list(e.problems), where) from None


def network_presets() -> list[str]:
    return presets_in(preset_dir("networks"))


def load_network(name_or_path: str | Path | NetworkSpec) -> NetworkSpec:
    """A network by preset name or from a YAML file."""
    if isinstance(name_or_path, NetworkSpec):
        return name_or_path
    return load_spec(name_or_path, "network", preset_dir("networks"), lambda data, where, _p: network_from_dict(data, where),
                     "or give a path to a network .yaml file")

"""Hardware-aware neural architecture search (000 §IV): the elastic space, a subnet's hardware cost, the searches.

Torch-free: the perplexity of a subnet comes from an evaluator passed in (``tstack.nas.train.perplexity`` for a
trained supernet), so that this module runs in the analytic core and its searches can be tested on any function.

- A search **space** is data (``presets/nas/*.yaml``): the choices of layers, heads, hidden and FFN size, and the
  sequence length the subnets run at. A subnet (``Arch``) takes one value of each, the same for every layer; its
  hidden size must be divisible by its heads (the attention splits the hidden width into heads). A combination
  that breaks that rule or a constraint raises ``Infeasible``; the searches skip it.
- **Hardware cost** of a subnet from any cost-model backend (``costmodel.load_target``): latency, energy, EDP of
  one inference (batch 1 at the space's sequence length, int8 on an accelerator, fp32 on a device). Two ways:
  ``direct_cost`` costs the subnet's whole workload; ``Lut`` is the paper's per-operation lookup table (one row
  per op of a layer for each (hidden, heads, ffn), one row per op outside the layers for each hidden), summed.
- **Searches** with one evaluation budget (unique subnets whose perplexity is asked for): the paper's evolution
  (population, mutation, crossover, Pareto retention), NSGA-II (pymoo) and random search.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tstack.costmodel.backend import Target, cost_workload, default_precision
from tstack.errors import SpecError, TstackError
from tstack.loader import load_spec, show, unknown_fields
from tstack.parallel import pmap
from tstack.spec import ModelSpec, RunSpec, preset_dir
from tstack.workload.build import build

DIMENSIONS = ("layers", "heads", "hidden", "ffn")
OBJECTIVES = ("edp", "latency", "energy")
ALGORITHMS = ("evolution", "nsga2", "random")
MAX_CHOICES = 64  # values of one dimension in a space file
MAX_SIZE = 1 << 16  # largest layers/heads/hidden/ffn/seq value in a space file


class Infeasible(TstackError):
    """A subnet outside the space's rules (hidden not divisible by heads) or over a constraint."""


@dataclass(frozen=True, order=True)
class Arch:
    """One subnet: the same layers/heads/hidden/ffn for every layer."""

    layers: int
    heads: int
    hidden: int
    ffn: int

    @property
    def label(self) -> str:
        return f"L{self.layers} A{self.heads} H{self.hidden} F{self.ffn}"


@dataclass(frozen=True)
class Space:
    """The elastic choices, and how the supernet is trained and its subnets run."""

    name: str
    layers: tuple[int, ...]
    heads: tuple[int, ...]
    hidden: tuple[int, ...]
    ffn: tuple[int, ...]
    seq: int
    batch: int
    lr: float
    vocab: int = 256
    description: str = ""
    sources: tuple[str, ...] = ()

    def choices(self, dim: str) -> tuple[int, ...]:
        return getattr(self, dim)

    @property
    def largest(self) -> Arch:
        return Arch(max(self.layers), max(self.heads), max(self.hidden), max(self.ffn))

    @property
    def smallest(self) -> Arch:
        """The smallest feasible subnet: fewest layers, narrowest hidden, fewest heads that divide it, smallest FFN."""
        hidden = min(self.hidden)
        heads = [h for h in self.heads if hidden % h == 0]
        return Arch(min(self.layers), min(heads), hidden, min(self.ffn))

    def check(self, a: Arch) -> Arch:
        """``a`` itself when it is a subnet of this space; Infeasible naming the broken rule otherwise."""
        for d in DIMENSIONS:
            if getattr(a, d) not in self.choices(d):
                raise Infeasible(f"{a.label}: {d}={getattr(a, d)} is not one of {list(self.choices(d))}")
        if a.hidden % a.heads:
            raise Infeasible(f"{a.label}: heads={a.heads} does not divide hidden={a.hidden}")
        return a

    def sample(self, rng: random.Random) -> Arch:
        """A uniformly drawn feasible subnet (heads drawn among those that divide the drawn hidden)."""
        hidden = rng.choice(self.hidden)
        return Arch(rng.choice(self.layers), rng.choice([h for h in self.heads if hidden % h == 0]), hidden,
                    rng.choice(self.ffn))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def model_spec(self, a: Arch) -> ModelSpec:
        """Any shape as a ModelSpec, a pre-norm decoder language model with tied byte embeddings (unchecked: the
        lookup table costs one-layer models outside the space's layer choices)."""
        return ModelSpec(name=f"{self.name}[{a.label}]", arch="decoder", layers=a.layers, hidden=a.hidden,
                         heads=a.heads, ffn=a.ffn, vocab=self.vocab, max_positions=self.seq, activation="gelu",
                         norm_position="pre", head="lm", default_seq=self.seq)


def _choices(problems: list[str], data: dict, key: str) -> tuple[int, ...]:
    value = data.get(key)
    if (not isinstance(value, list) or not 1 <= len(value) <= MAX_CHOICES
            or not all(type(v) is int and 1 <= v <= MAX_SIZE for v in value)):
        problems.append(f"{key}={show(value, 60)} must be a list of 1 to {MAX_CHOICES} integers in [1, {MAX_SIZE}]")
        return ()
    return tuple(sorted(set(value)))


def load_space(name_or_path: str | Path) -> Space:
    """A search space by preset name (``paper``, ``paper-small``) or from a .yaml file."""
    return load_spec(name_or_path, "space", preset_dir("nas"), _space_from_file, "or give a path to a space .yaml file")


def _space_from_file(data: dict, where: str, path: Path) -> Space:
    problems: list[str] = []
    known = {"name", "description", "sources", "seq", "batch", "lr", "vocab", *DIMENSIONS}
    problems += unknown_fields(data, known, lambda k: show(k, 40), limit=len(data))
    dims = {d: _choices(problems, data, d) for d in DIMENSIONS}
    ints = {}
    for key, lo, hi, default in (("seq", 1, MAX_SIZE, None), ("batch", 1, 4096, None), ("vocab", 1, 256, 256)):
        value = data.get(key, default)
        if type(value) is not int or not lo <= value <= hi:
            problems.append(f"{key}={show(value, 40)} must be an integer in [{lo}, {hi}]")
        ints[key] = value
    lr = data.get("lr")
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not 0 < lr < 1:
        problems.append(f"lr={show(lr, 40)} must be a number in (0, 1)")
    if not problems and not any(h % a == 0 for h in dims["hidden"] for a in dims["heads"]):
        problems.append("no hidden size is divisible by any head count: the space has no subnet")
    if problems:
        raise SpecError(problems, where)
    return Space(name=data.get("name", path.stem), **dims, seq=ints["seq"], batch=ints["batch"], lr=float(lr),
                 vocab=ints["vocab"], description=str(data.get("description", "")),
                 sources=tuple(map(str, data.get("sources", []))))


def space_from_dict(data: dict[str, Any]) -> Space:
    """The Space a checkpoint or result document recorded (``Space.to_dict``)."""
    return Space(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


# ---------------------------------------------------------------- hardware cost

@dataclass(frozen=True)
class HwCost:
    """One inference of a subnet: seconds, joules and their product (EDP)."""

    latency_s: float
    joules: float

    @property
    def edp(self) -> float:
        return self.latency_s * self.joules

    def objective(self, name: str) -> float:
        return {"latency": self.latency_s, "energy": self.joules, "edp": self.edp}[name]


def run_spec(space: Space, target: Target) -> RunSpec:
    """The run a subnet is costed for: one inference of batch 1 at the space's sequence length."""
    return RunSpec(mode="infer", batch=1, seq=space.seq, precision=default_precision(target))


def _joules(costs: Sequence[Any]) -> float:
    """Total joules; NaN when the backend models no energy (a roofline device)."""
    return math.nan if any(c.joules is None for c in costs) else sum(c.joules for c in costs)


def _entries(space: Space, a: Arch, target: Target) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    return cost_workload(build(space.model_spec(a), run_spec(space, target), collapse=True, device=target.name),
                         target)


def direct_cost(space: Space, a: Arch, target: Target) -> HwCost:
    """The subnet's whole workload costed on the target (joules NaN when the backend models no energy)."""
    space.check(a)
    _, costs = _entries(space, a, target)
    return HwCost(sum(c.seconds for c in costs), _joules(costs))


@dataclass
class Lut:
    """000 §IV's lookup table: seconds and joules per op of one layer for each (hidden, heads, ffn), and per op
    outside the layers for each hidden; a subnet's cost is the sum of its rows (the layer rows times layers).

    Rows are filled from one-layer models costed whole on the target, so a backend's whole-workload effects
    inside a layer (the accelerator's fusion and int32 outputs) are in the rows.
    """

    space: Space
    target: Target
    layer_rows: dict[tuple[int, int, int], list[tuple[str, float, float]]] = field(default_factory=dict)
    other_rows: dict[int, list[tuple[str, float, float]]] = field(default_factory=dict)

    def fill(self, a: Arch) -> None:
        key = (a.hidden, a.heads, a.ffn)
        if key in self.layer_rows:
            return
        ops, costs = _entries(self.space, Arch(1, a.heads, a.hidden, a.ffn), self.target)
        layer, other = [], []
        for op, c in zip(ops, costs):
            row = (op.name, c.seconds / op.count, (c.joules / op.count) if c.joules is not None else math.nan)
            (layer if op.label("part") == "transformer" else other).append(row)
        self.layer_rows[key] = layer
        self.other_rows.setdefault(a.hidden, other)

    def fill_space(self) -> None:
        """Every row the space can ask for."""
        for hidden in self.space.hidden:
            for heads in self.space.heads:
                if hidden % heads == 0:
                    for ffn in self.space.ffn:
                        self.fill(Arch(1, heads, hidden, ffn))

    def __len__(self) -> int:
        return sum(map(len, self.layer_rows.values())) + sum(map(len, self.other_rows.values()))

    def cost(self, a: Arch) -> HwCost:
        self.space.check(a)
        self.fill(a)
        layer, other = self.layer_rows[(a.hidden, a.heads, a.ffn)], self.other_rows[a.hidden]
        seconds = sum(r[1] for r in other) + a.layers * sum(r[1] for r in layer)
        joules = sum(r[2] for r in other) + a.layers * sum(r[2] for r in layer)
        return HwCost(seconds, joules)

    def records(self) -> list[dict[str, Any]]:
        out = [{"hidden": h, "heads": None, "ffn": None, "part": "outside layers", "op": n, "seconds": s, "joules": j}
               for h, rows in sorted(self.other_rows.items()) for n, s, j in rows]
        out += [{"hidden": h, "heads": a, "ffn": f, "part": "per layer", "op": n, "seconds": s, "joules": j}
                for (h, a, f), rows in sorted(self.layer_rows.items()) for n, s, j in rows]
        return out


# ---------------------------------------------------------------- constraints, evaluation, Pareto sets

@dataclass(frozen=True)
class Constraints:
    """Limits a subnet must meet: latency (s), energy (J), weight memory (bytes at the run's precision)."""

    max_latency_s: float | None = None
    max_joules: float | None = None
    max_weight_bytes: float | None = None

    def check(self, a: Arch, cost: HwCost, weight_bytes: float) -> None:
        """Infeasible naming the first limit the subnet breaks."""
        for limit, value, what in ((self.max_latency_s, cost.latency_s, "latency_seconds"),
                                   (self.max_joules, cost.joules, "joules"),
                                   (self.max_weight_bytes, weight_bytes, "weight_bytes")):
            if limit is not None and not value <= limit:
                raise Infeasible(f"{a.label}: {what} {value:.6g} is over the limit {limit:.6g}")


@dataclass(frozen=True)
class Candidate:
    """An evaluated subnet."""

    arch: Arch
    perplexity: float
    cost: HwCost
    weight_bytes: float


def weight_bytes(space: Space, a: Arch, target: Target) -> float:
    """Bytes of the subnet's weights at the precision it is costed at (int8 on an accelerator, fp32 otherwise)."""
    from tstack.workload.params import param_count

    return float(param_count(space.model_spec(a))) * (1 if default_precision(target) == "int8" else 4)


def pareto_mask(points: Sequence[Sequence[float]]) -> np.ndarray:
    """Whether each point (all coordinates minimised) is dominated by no other point; NaN coordinates never win."""
    if len(points) == 0:
        return np.zeros(0, dtype=bool)
    p = np.asarray(points, dtype=float).reshape(len(points), -1)
    le = (p[:, None, :] <= p[None, :, :]).all(axis=2)  # le[i, j]: i is nowhere worse than j
    lt = (p[:, None, :] < p[None, :, :]).any(axis=2)
    dominated = (le & lt).any(axis=0)
    return ~dominated & ~np.isnan(p).any(axis=1)


def feasible_count(space: Space) -> int:
    """How many subnets the space holds (hidden divisible by heads)."""
    pairs = sum(1 for h in space.hidden for a in space.heads if h % a == 0)
    return len(space.layers) * len(space.ffn) * pairs


class Evaluator:
    """Evaluates subnets once each: hardware cost and the rules first (Infeasible: skipped, with its reason), then
    the perplexities of the new feasible ones, together on tstack's parallel map. ``budget`` bounds the number of
    perplexity evaluations; ``done`` says it is spent or every subnet of the space has been seen. ``progress(n)`` is
    called with the number of new evaluations after each batch."""

    def __init__(self, space: Space, hw_cost: Callable[[Arch], HwCost], perplexity: Callable[[Arch], float],
                 budget: int, constraints: Constraints = Constraints(),
                 weights: Callable[[Arch], float] = lambda a: 0.0, executor: str = "process",
                 workers: int | None = None, progress: Callable[[int], None] | None = None) -> None:
        self.space, self.hw_cost, self.perplexity, self.budget = space, hw_cost, perplexity, budget
        self.progress = progress
        self.constraints, self.weights, self.executor, self.workers = constraints, weights, executor, workers
        self.evaluated: dict[Arch, Candidate] = {}
        self.skipped: dict[Arch, str] = {}
        self.size = feasible_count(space)

    @property
    def done(self) -> bool:
        return len(self.evaluated) >= self.budget or len(self.evaluated) + len(self.skipped) >= self.size

    def _screen(self, a: Arch) -> tuple[HwCost, float]:
        self.space.check(a)
        cost, wb = self.hw_cost(a), self.weights(a)
        self.constraints.check(a, cost, wb)
        return cost, wb

    def evaluate(self, archs: Sequence[Arch]) -> list[Candidate]:
        """The candidates of ``archs`` (feasible ones, in order, each once; evaluated now or before)."""
        new: dict[Arch, tuple[HwCost, float]] = {}
        for a in archs:
            if a in self.evaluated or a in self.skipped or a in new:
                continue
            if len(self.evaluated) + len(new) >= self.budget:
                break
            try:
                new[a] = self._screen(a)
            except Infeasible as e:
                self.skipped[a] = str(e)
        todo = list(new)
        for a, ppl in zip(todo, pmap(self.perplexity, todo, executor=self.executor, workers=self.workers)):
            self.evaluated[a] = Candidate(a, float(ppl), *new[a])
        if self.progress and todo:
            self.progress(len(todo))
        seen, out = set(), []
        for a in archs:
            if a in self.evaluated and a not in seen:
                seen.add(a)
                out.append(self.evaluated[a])
        return out


def objectives(c: Candidate, objective: str) -> tuple[float, float]:
    return (c.cost.objective(objective), c.perplexity)


def pareto_set(cands: Sequence[Candidate], objective: str) -> list[Candidate]:
    mask = pareto_mask([objectives(c, objective) for c in cands])
    return [c for c, keep in zip(cands, mask) if keep]


@dataclass
class SearchResult:
    algorithm: str
    candidates: list[Candidate]  # every evaluated subnet, in evaluation order
    front: list[Candidate]  # Pareto-optimal in (objective, perplexity)
    generations: int
    skipped: dict[Arch, str]
    seconds: float = 0.0


def _result(name: str, ev: Evaluator, objective: str, generations: int) -> SearchResult:
    cands = list(ev.evaluated.values())
    return SearchResult(name, cands, pareto_set(cands, objective), generations, dict(ev.skipped))


# ---------------------------------------------------------------- the searches

def mutate(space: Space, a: Arch, prob: float, rng: random.Random) -> Arch:
    """Each dimension redrawn from its choices with probability ``prob`` (000 §IV: 0.2)."""
    values = {d: rng.choice(space.choices(d)) if rng.random() < prob else getattr(a, d) for d in DIMENSIONS}
    return Arch(**values)


def crossover(a: Arch, b: Arch, rng: random.Random) -> Arch:
    """Uniform crossover: each dimension from one parent or the other."""
    return Arch(**{d: getattr(a if rng.random() < 0.5 else b, d) for d in DIMENSIONS})


def _sample_new(ev: Evaluator, rng: random.Random, n: int) -> list[Arch]:
    """Up to ``n`` uniformly drawn subnets not seen before (fewer when the space runs out)."""
    out: list[Arch] = []
    misses = 0
    while len(out) < n and misses < 1000:
        a = ev.space.sample(rng)
        if a in ev.evaluated or a in ev.skipped or a in out:
            misses += 1
            continue
        misses = 0
        out.append(a)
    return out


def evolution(ev: Evaluator, objective: str, population: int, iterations: int, mutation: float,
              seed: int = 0) -> SearchResult:
    """000 §IV's evolutionary search: a random first population (of feasible subnets), then per iteration
    ``population`` children of the retained subnets (half by crossover then mutation, half by mutation alone);
    after every iteration only the Pareto-optimal subnets in (objective, perplexity) are retained. It ends after
    ``iterations`` iterations, or earlier when the evaluation budget is spent or the space is exhausted."""
    rng = random.Random(seed)
    first: list[Candidate] = []
    while len(first) < population and not ev.done:  # infeasible draws are skipped: draw until the population is full
        todo = _sample_new(ev, rng, population - len(first))
        if not todo:
            break
        first += ev.evaluate(todo)
    kept = pareto_set(first, objective)
    generations = 1
    while generations < iterations and not ev.done and kept:
        children = []
        for i in range(population):
            parent = rng.choice(kept).arch
            if i % 2 and len(kept) > 1:
                parent = crossover(parent, rng.choice(kept).arch, rng)
            children.append(mutate(ev.space, parent, mutation, rng))
        kept = pareto_set(kept + ev.evaluate(children), objective)
        generations += 1
    return _result("evolution", ev, objective, generations)


def random_search(ev: Evaluator, objective: str, seed: int = 0) -> SearchResult:
    """Uniformly drawn new subnets until the budget is spent or the space is exhausted."""
    rng = random.Random(seed)
    batches = 0
    while not ev.done:
        todo = _sample_new(ev, rng, max(1, ev.budget - len(ev.evaluated)))
        if not todo:
            break
        ev.evaluate(todo)
        batches += 1
    return _result("random", ev, objective, batches)


def nsga2(ev: Evaluator, objective: str, population: int, iterations: int, mutation: float,
          seed: int = 0) -> SearchResult:
    """NSGA-II (pymoo) over the index of each dimension's choice: integer SBX crossover and polynomial mutation
    (each variable with probability ``mutation``), duplicates eliminated; infeasible subnets get infinite
    objectives and a violated constraint. Same stopping rule as ``evolution``."""
    try:
        from pymoo.algorithms.moo.nsga2 import NSGA2
    except ImportError:
        raise TstackError("--algorithm nsga2 needs pymoo: pip install 'tstack[nas]'") from None
    from pymoo.core.problem import Problem
    from pymoo.operators.crossover.sbx import SBX
    from pymoo.operators.mutation.pm import PM
    from pymoo.operators.repair.rounding import RoundingRepair
    from pymoo.operators.sampling.rnd import IntegerRandomSampling

    space = ev.space
    upper = np.array([len(space.choices(d)) - 1 for d in DIMENSIONS])
    problem = Problem(n_var=len(DIMENSIONS), n_obj=2, n_ieq_constr=1, xl=np.zeros(len(DIMENSIONS)), xu=upper,
                      vtype=int)
    algo = NSGA2(pop_size=population, sampling=IntegerRandomSampling(),
                 crossover=SBX(prob=0.9, eta=15, vtype=float, repair=RoundingRepair()),
                 mutation=PM(prob_var=mutation, eta=20, vtype=float, repair=RoundingRepair()),
                 eliminate_duplicates=True)
    algo.setup(problem, seed=seed, verbose=False)
    generations = 0
    while generations < iterations and not ev.done:
        pop = algo.ask()
        archs = [Arch(**{d: space.choices(d)[int(round(v))] for d, v in zip(DIMENSIONS, x)}) for x in pop.get("X")]
        ev.evaluate(archs)
        f, g = [], []
        for a in archs:
            c = ev.evaluated.get(a)
            f.append(objectives(c, objective) if c else (math.inf, math.inf))
            g.append([-1.0 if c else 1.0])
        pop.set("F", np.array(f, dtype=float), "G", np.array(g, dtype=float))
        algo.tell(infills=pop)
        generations += 1
    return _result("nsga2", ev, objective, generations)


# ---------------------------------------------------------------- reductions at a perplexity budget

PERPLEXITY_DELTAS = (0.1, 1.0)  # the perplexity budgets above the baseline's that 000 §IV-2 reads Fig. 4 at
PAPER_REDUCTIONS = {("latency", 0.1): 1.4, ("latency", 1.0): 2.4, ("energy", 0.1): 1.6, ("energy", 1.0): 4.4,
                    ("edp", 0.1): 2.2, ("edp", 1.0): 10.6}  # 000 §IV-2, against the stand-alone baseline


def reductions(cands: Sequence[Candidate], baseline: Candidate,
               deltas: Sequence[float] = PERPLEXITY_DELTAS) -> list[dict]:
    """Per metric and perplexity budget: baseline cost / the lowest cost of a candidate whose perplexity is at most
    the baseline's + delta (000 §IV-2's reading of Fig. 4), next to the paper's figure."""
    rows = []
    for metric in OBJECTIVES:
        base = baseline.cost.objective(metric)
        for delta in deltas:
            ok = [c for c in cands if c.perplexity <= baseline.perplexity + delta
                  and math.isfinite(c.cost.objective(metric))]
            best = min(ok, key=lambda c: c.cost.objective(metric)) if ok and math.isfinite(base) else None
            rows.append({"metric": metric, "perplexity_delta": delta,
                         "reduction": base / best.cost.objective(metric) if best else None,
                         "subnet": best.arch.label if best else None,
                         "perplexity": best.perplexity if best else None,
                         "paper_reduction": PAPER_REDUCTIONS.get((metric, delta))})
    return rows

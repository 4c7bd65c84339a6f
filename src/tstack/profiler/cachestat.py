"""NLP-Perf's cachestat mode (003 §IV): last-level-cache misses and MPKI per op, from counters or simulated.

``cachestat(op, cfg)`` reports an op's last-level-cache misses, instructions and
MPKI (misses per kilo-instruction, 003 Fig. 12) for two states of the cache:

- cold (``llc_misses``): one run whose own buffers are in no cache while the code, the
  interpreter's and PyTorch's data are warm, as in a model pass whose other kernels evicted the
  op's data; a streaming kernel then misses once per 64-byte line of its compulsory traffic (the
  cost model's ``Op.bytes``), plus a few hundred lines of the op's own Python/PyTorch objects;
- warm (``warm_llc_misses``): one run right after a run of the same op, so that only what does
  not fit in the LLC misses (the working set against the cache's capacity).

Both paths prepare the op twice (same shapes and values, separate buffers): a run of the twin
warms everything but the measured copy's buffers. With counters: ``LLC-load-misses`` +
``LLC-store-misses`` (``cache-misses`` where the CPU has no LLC store event) and
``instructions``, means over ``repeats`` runs; before each cold run, with the counters off, one
byte per line of a buffer twice the LLC's size is written and the twin runs. Hardware
prefetchers hide part of a streaming kernel's misses from these demand-miss events, so measured
misses can be well below the simulated ones.

Without counters: valgrind's callgrind, whose cache simulator is cachegrind's (first-level
instruction and data caches and the last level, write-allocate, LRU, no prefetcher), runs the
ops in one subprocess (``runop``, which documents the protocol). Cachegrind itself would also
simulate the ~5·10⁹ instructions of ``import torch`` (90 s here) and valgrind 3.19 has no
request to start and stop it; callgrind starts with instrumentation off and client requests
switch it on around the op's runs and dump the counts of each run. The simulated caches only
see what runs instrumented, so buffers written during setup are cold for them. Results are
labelled ``simulated`` and are deterministic (same numbers from every process). Caveats, in
``note`` and ``reduced``:

- shapes are reduced so that a run costs ~10⁷ instructions (``reduce_op``: the batch, the larger
  GEMM dim or the rows first; K and the row length kept while possible); the counts are those of
  the reduced run, ``reduced`` lists what changed and ``scale`` is full work / simulated work;
- the LL is the host's last-level cache (sysfs), its set count rounded to a power of two as
  valgrind requires (260 MiB 20-way becomes 264 MiB 33-way), unless ``llc`` is given;
- valgrind emulates no AVX-512, so PyTorch runs its AVX2 kernels: instruction counts are those
  of that code path; one thread; LL misses are data misses (instruction fetch misses are left out).
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace

from tstack.errors import TstackError
from tstack.host import CacheGeometry, host_llc

# --------------------------------------------------------------------------------------------------
# Event names -> perf_event_attr (type, config), as perf names them (linux/perf_event.h)
from tstack.profiler import counters
from tstack.profiler.runtime import RuntimeConfig
from tstack.workload import formulas as F
from tstack.workload.op import DTYPE_BYTES, GEMM_KINDS, Op


# --------------------------------------------------------------------------------------------------
# Reduced shapes
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Budget:
    """Work of one simulated run: GEMM FLOPs, or elements of the other kernels (~10 instructions each)."""

    gemm_flops: int = 1 << 26
    elements: int = 1 << 19


# Row kernels: dims cut first to last (dims not listed after these); the row length (cols) last.
_CUT_ORDER = {"gather": ("rows", "table", "cols")}
_CUT_DEFAULT = ("rows", "params", "table", "cols")


def _work(kind: str, dims: dict[str, int]) -> int:
    if kind in GEMM_KINDS:
        return 2 * dims.get("M", 1) * dims.get("N", 1) * dims.get("K", 1) * dims.get("batch", 1)
    if "params" in dims:
        return dims["params"]
    cols = dims.get("cols", 1)
    return dims.get("rows", 1) * cols + dims.get("table", 0) * cols


def _cut(dims: dict[str, int], key: str, factor: float) -> None:
    dims[key] = max(1, int(dims[key] / factor))


def _reduce_gemm(kind: str, dims: dict[str, int], limit: int) -> None:
    """Batch first, then the larger of M and N (down to the smaller), then both, K last.

    A GEMM's compulsory traffic per FLOP is about (1/M + 1/N + 1/K)/2 elements, so cutting the
    batch leaves the miss rate as it is and cutting the larger of M, N changes it least.
    """
    if dims.get("batch", 1) > 1:
        _cut(dims, "batch", max(1.0, _work(kind, dims) / limit))
    big, small = ("M", "N") if dims["M"] >= dims["N"] else ("N", "M")
    factor = _work(kind, dims) / limit
    if factor > 1:
        _cut(dims, big, min(factor, dims[big] / dims[small]))
    factor = _work(kind, dims) / limit
    if factor > 1:
        _cut(dims, "M", math.sqrt(factor))
        _cut(dims, "N", max(1.0, _work(kind, dims) / limit))
    factor = _work(kind, dims) / limit
    if factor > 1:
        _cut(dims, "K", factor)


def reduce_op(op: Op, budget: Budget | None = None) -> tuple[Op, tuple[tuple[str, int, int], ...], float]:
    """A smaller Op of the same kernel whose work fits ``budget``; (op, (dim, full, reduced) changed, full/reduced work).

    GEMMs shrink the batch, then the larger of M and N, and keep the reduction dim K while
    possible; row kernels shrink rows (and an embedding table) and keep the row length (cols)
    while possible. FLOPs and bytes of the reduced Op are recomputed for GEMMs and scaled with
    the work otherwise.
    """
    budget = budget or Budget()
    gemm = op.is_gemm
    limit = budget.gemm_flops if gemm else budget.elements
    dims = dict(op.dims)
    full = _work(op.kind, dims)
    if gemm:
        _reduce_gemm(op.kind, dims, limit)
    else:
        order = _CUT_ORDER.get(op.kind, _CUT_DEFAULT)
        for key in tuple(k for k in order if k in dims) + tuple(k for k in dims if k not in order):
            factor = _work(op.kind, dims) / limit
            if factor <= 1:
                break
            _cut(dims, key, factor)
    reduced = _work(op.kind, dims)
    changed = tuple((k, v, dims[k]) for k, v in op.dims if dims[k] != v)
    if not changed:
        return op, (), 1.0
    new_dims = tuple((k, dims[k]) for k, _ in op.dims)
    if op.is_gemm:
        M, N, K, batch = (dims.get(k, 1) for k in ("M", "N", "K", "batch"))
        M0, N0, K0, b0 = op.gemm_shape
        ib = DTYPE_BYTES.get(op.dtype, 4)
        ob = (op.bytes / b0 - (M0 * K0 + K0 * N0) * ib) / (M0 * N0) if M0 * N0 else ib
        counts = F.gemm(M, N, K, batch, ib, max(1, round(ob)))
        flops, nbytes = counts.flops, counts.bytes
    else:
        flops, nbytes = round(op.flops * reduced / full), round(op.bytes * reduced / full)
    return replace(op, dims=new_dims, flops=flops, bytes=nbytes), changed, full / reduced


# --------------------------------------------------------------------------------------------------
# cachestat
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CacheStat:
    """LLC misses and instructions of one run of an op, with the cache cold and warm.

    ``llc_misses``: one run with none of the op's data cached; ``warm_llc_misses``: one run right
    after another run of the op; ``instructions``: per run. ``simulated``: from callgrind's cache
    simulation, on the reduced shape ``reduced`` ((dim, full, simulated) for each dim changed)
    when there is one, ``scale`` being full work / simulated work. ``method`` and ``note`` say how.
    """

    llc_misses: float
    instructions: float
    warm_llc_misses: float
    simulated: bool
    method: str
    reduced: tuple[tuple[str, int, int], ...] = ()
    scale: float = 1.0
    note: str = ""

    @property
    def mpki(self) -> float:
        """LLC misses per 1000 instructions, cold."""
        return 1000 * self.llc_misses / self.instructions if self.instructions else 0.0

    @property
    def warm_mpki(self) -> float:
        return 1000 * self.warm_llc_misses / self.instructions if self.instructions else 0.0

    def describe(self) -> str:
        shape = (" on " + ", ".join(f"{k} {a}→{b}" for k, a, b in self.reduced)) if self.reduced else ""
        label = "simulated" if self.simulated else "measured"
        return (f"{label}{shape}: {self.instructions:,.0f} instructions, LLC misses cold {self.llc_misses:,.0f} "
                f"(MPKI {self.mpki:.2f}), warm {self.warm_llc_misses:,.0f} (MPKI {self.warm_mpki:.2f}); {self.method}")


def cachestat(op: Op, cfg: RuntimeConfig, *, method: str = "auto", llc: CacheGeometry | None = None,
              budget: Budget | None = None, seed: int = 0) -> CacheStat:
    """cachestat of one op: hardware counters where they work, else the callgrind simulation (see module doc).

    ``method``: ``auto``, ``counters`` or ``simulate``. ``llc`` and ``budget`` apply to the simulation.
    """
    return cachestat_many([op], cfg, method=method, llc=llc, budget=budget, seed=seed)[0]


def cachestat_many(ops: Sequence[Op], cfg: RuntimeConfig, *, method: str = "auto", llc: CacheGeometry | None = None,
                   budget: Budget | None = None, seed: int = 0, repeats: int = 5) -> list[CacheStat]:
    """cachestat of several ops; the simulation runs them all in one valgrind process (one torch import)."""
    if method not in ("auto", "counters", "simulate"):
        raise TstackError(f"cachestat method={method!r} is not one of auto, counters, simulate")
    if cfg.device != "cpu":
        raise TstackError(f"cachestat counts CPU caches: device={cfg.device!r} is not cpu")
    if method == "counters" or (method == "auto" and counters.perf_support().available):
        return [_cachestat_counters(op, cfg, seed, repeats) for op in ops]
    if not ops:
        return []
    sim = counters.simulator_support()
    if not sim.available:
        raise TstackError(f"cachestat: hardware counters are unavailable ({counters.perf_support().reason}) "
                          f"and the simulated fallback cannot run ({sim.reason})")
    return _cachestat_simulated(list(ops), cfg, llc, budget or Budget(), seed)


class _Evict:
    """Writes one byte per line of a buffer twice the LLC's size, pushing everything else out of the caches."""

    def __init__(self) -> None:
        import torch

        geom = host_llc()
        size = 2 * (geom.size if geom else 64 << 20)
        self.lines = torch.zeros(size, dtype=torch.uint8)[:: geom.line if geom else 64]

    def __call__(self) -> None:
        self.lines.add_(1)


def _cachestat_counters(op: Op, cfg: RuntimeConfig, seed: int, repeats: int) -> CacheStat:
    from tstack.profiler.opexec import prepare
    from tstack.profiler.runtime import controlled

    misses = ["LLC-load-misses", "LLC-store-misses"]
    with controlled(cfg):
        twin, p = prepare(op, cfg, seed), prepare(op, cfg, seed)
        for _ in range(3):
            twin.run()
            p.run()
        try:
            counters.count_events(p.run, [*misses, "instructions"])
        except counters.CountersUnavailable:
            raise
        except TstackError:
            misses = ["cache-misses"]  # no LLC store event on this CPU: cache-misses counts the LLC's
        evict = _Evict()

        def evict_then_twin() -> None:
            evict()
            twin.run()

        cold = counters.count_events(p.run, [*misses, "instructions"], repeats, between=evict_then_twin)
        warm = counters.count_events(p.run, [*misses, "instructions"], repeats)
    return CacheStat(llc_misses=sum(cold[m] for m in misses), instructions=cold["instructions"],
                     warm_llc_misses=sum(warm[m] for m in misses), simulated=False,
                     method=f"perf_event_open: {' + '.join(misses)}, mean of {repeats} runs, {cfg.threads} threads")


_DESC_LL = re.compile(r"desc: LL cache:\s*(\d+) B, (\d+) B, (\d+)-way")
_TRIGGER = re.compile(r"desc: Trigger: Client Request: (\S+)")


def _read_dump(path: str) -> tuple[str | None, dict[str, int], str]:
    """(client request name, event totals, LL description) of one callgrind dump file."""
    name, events, totals, ll = None, [], [], ""
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("desc: Trigger:"):
                m = _TRIGGER.match(line)
                name = m.group(1) if m else None
            elif line.startswith("desc: LL cache:"):
                m = _DESC_LL.match(line)
                ll = str(CacheGeometry(int(m.group(1)), int(m.group(3)), int(m.group(2)))) if m else line[15:].strip()
            elif line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith("totals:") or (line.startswith("summary:") and not totals):
                totals = [int(x) for x in line.split()[1:]]
    values = {e: (totals[i] if i < len(totals) else 0) for i, e in enumerate(events)}  # trailing zeros are omitted
    return name, values, ll


def _cachestat_simulated(ops: list[Op], cfg: RuntimeConfig, llc: CacheGeometry | None, budget: Budget,
                         seed: int) -> list[CacheStat]:
    from tstack.profiler import runop
    from tstack.profiler.opexec import implementation_key

    reduced = [reduce_op(op, budget) for op in ops]
    # Ops that reduce to the same kernel at the same shape (e.g. Q/K/V projections, layers) are simulated once.
    keys = [(r.kind, implementation_key(r), r.dims, r.dtype) for r, _, _ in reduced]
    unique: dict[tuple, Op] = {}
    for k, (r, _, _) in zip(keys, reduced):
        unique.setdefault(k, r)
    index = {k: i for i, k in enumerate(unique)}
    host = host_llc()
    geom = (llc or host).for_valgrind() if (llc or host) else None
    spec = {"mode": "callgrind", "ops": [runop.op_to_json(r) for r in unique.values()], "device": "cpu",
            "flush_denormal": cfg.flush_denormal, "seed": seed, "warmup": 1}
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory(prefix="tstack-cachestat-") as tmp:
        out = os.path.join(tmp, "callgrind.out")
        cmd = [shutil.which("valgrind") or "valgrind", "--tool=callgrind", "--instr-atstart=no", "--cache-sim=yes",
               "--dump-line=no", f"--callgrind-out-file={out}", f"--log-file={os.path.join(tmp, 'valgrind.log')}"]
        if geom:
            cmd.append(f"--LL={geom.size},{geom.assoc},{geom.line}")
        cmd += [sys.executable, "-m", "tstack.profiler.runop", json.dumps(spec)]
        try:
            # On any exception (Ctrl-C, SIGTERM raised as an exception by the CLI, a timeout) subprocess.run kills
            # valgrind and waits for it before re-raising; the temporary folder goes with the with-block.
            r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=max(600, 120 * len(unique)))
        except subprocess.TimeoutExpired:
            raise TstackError(f"cachestat simulation of {len(unique)} op(s) did not finish in time") from None
        if r.returncode != 0:
            lines = [x for x in (r.stderr or "").splitlines() if x.strip()]
            raise TstackError(f"cachestat simulation failed: {lines[-1] if lines else f'valgrind exit status {r.returncode}'}")
        dumps: dict[str, dict[str, int]] = {}
        ll_text = ""
        for path in glob.glob(out + ".*"):
            name, values, ll = _read_dump(path)
            if name:
                dumps[name] = values
                ll_text = ll_text or ll
    host_text = f" (host LLC {host})" if host and not llc and geom != host else ""
    note = f"callgrind cache simulation, LL {ll_text}{host_text}, valgrind's AVX2 code path, 1 thread"
    stats = []
    for i, (_, changed, scale) in enumerate(reduced):
        j = index[keys[i]]
        cold, warm = dumps.get(f"{runop.DUMP_PREFIX}{j}-cold"), dumps.get(f"{runop.DUMP_PREFIX}{j}-warm")
        if cold is None or warm is None:
            raise TstackError(f"cachestat simulation: no callgrind dump for op {ops[i].name!r}")
        stats.append(CacheStat(llc_misses=cold["DLmr"] + cold["DLmw"], instructions=cold["Ir"],
                               warm_llc_misses=warm["DLmr"] + warm["DLmw"], simulated=True,
                               method=counters.simulator_support().reason.replace("valgrind-", "callgrind ")
                               + " cache simulation",
                               reduced=changed, scale=scale, note=note))
    return stats

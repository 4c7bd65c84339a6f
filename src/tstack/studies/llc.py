"""LLC misses and MPKI per NLP-Opt variant (003 Fig. 12): hardware counters where they work, else a cache simulation.

Each variant of a bench case (``bench.variant_module``) runs once to warm up, once more to bring its code and data
into the caches, and then the measured run: the misses of that steady-state run are what does not fit in the LLC
(the working set against the cache's capacity, 003 §VI-B "Scalability: Cache efficiency").

- Counters (``counters.perf_support()``): ``LLC-load-misses`` + ``LLC-store-misses`` and ``instructions`` through
  ``count_events``, in this process, on the host's own LLC and with ``cfg.threads``.
- Simulated (no PMU, as in most VMs): one ``valgrind --tool=callgrind --instr-atstart=no --cache-sim=yes`` process
  runs ``python -m tstack.studies.llc JOB.pt``, which loads the variants built and pickled here and switches
  instrumentation on around the two last runs with callgrind client requests (``profiler.runop.ClientRequests``),
  zeroing the counts after the first and dumping them after the second. One thread; valgrind runs PyTorch's AVX2
  kernels; LL data misses (DLmr + DLmw) are reported. The LL geometry is ``LLC`` (``--LL``), by default 24 MiB
  12-way, the power-of-two-sets neighbour of the 24.75 MB 11-way LLC of 003's Xeon Gold 5220.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import torch

from tstack.errors import SpecError, TstackError
from tstack.kernels.api import Params
from tstack.studies.nlpopt_bench import Case, variant_module

DUMP_PREFIX = "tstack-variant-"


@dataclass(frozen=True)
class LLC:
    """A simulated last-level cache: bytes, ways, line bytes (valgrind needs a power-of-two set count)."""

    size: int = 24 << 20
    ways: int = 12
    line: int = 64

    def __post_init__(self) -> None:
        sets = self.size // max(1, self.ways * self.line)
        if self.size <= 0 or self.ways <= 0 or self.line <= 0 or sets * self.ways * self.line != self.size or sets & (sets - 1):
            raise SpecError([f"LLC size={self.size} B, ways={self.ways}, line={self.line} B: size must be ways × line × "
                             "a power-of-two set count"], "llc")


@dataclass(frozen=True)
class LLCStat:
    """Misses and instructions of one steady-state run of a variant; ``simulated`` says which method."""

    variant: str
    llc_misses: float
    instructions: float
    simulated: bool

    @property
    def mpki(self) -> float:
        return 1000 * self.llc_misses / self.instructions if self.instructions else 0.0


def variant_modules(case: Case, variants: list[str], params: Params) -> dict[str, torch.nn.Module]:
    """{variant: module} of a case; variants that do not apply are left out."""
    out = {}
    for v in variants:
        try:
            out[v] = variant_module(case, v, params)
        except TstackError:
            continue
    return out


def llc_stats(case: Case, variants: list[str], params: Params, llc: LLC | None = None, threads: int = 1,
              timeout: float = 3600.0) -> list[LLCStat]:
    """LLC misses per variant of ``case`` (see the module doc for the two methods); ``timeout`` (s) bounds the simulation."""
    from tstack.profiler.counters import perf_support, simulator_support

    modules = variant_modules(case, variants, params)
    if perf_support().available:
        return _counted(case.inputs, modules, threads)
    sim = simulator_support()
    if not sim.available:
        raise TstackError(f"LLC misses: hardware counters are unavailable ({perf_support().reason}) and the simulation "
                          f"cannot run ({sim.reason})")
    return _simulated(case.inputs, modules, llc or LLC(), timeout)


def _counted(inputs: tuple[torch.Tensor, ...], modules: dict[str, torch.nn.Module], threads: int) -> list[LLCStat]:
    from tstack.profiler.counters import count_events
    from tstack.profiler.runtime import RuntimeConfig, controlled

    events = ["LLC-load-misses", "LLC-store-misses", "instructions"]
    stats = []
    with controlled(RuntimeConfig(threads=threads)), torch.no_grad():
        for v, m in modules.items():
            m(*inputs)
            m(*inputs)
            c = count_events(lambda m=m: m(*inputs), events)
            stats.append(LLCStat(v, c["LLC-load-misses"] + c["LLC-store-misses"], c["instructions"], False))
    return stats


def _simulated(inputs: tuple[torch.Tensor, ...], modules: dict[str, torch.nn.Module], llc: LLC,
               timeout: float) -> list[LLCStat]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    with tempfile.TemporaryDirectory(prefix="tstack-llc-") as tmp:
        job = os.path.join(tmp, "job.pt")
        torch.save({"inputs": inputs, "modules": modules}, job)  # built here: weight init under valgrind is slow
        out = os.path.join(tmp, "callgrind.out")
        cmd = [shutil.which("valgrind") or "valgrind", "--tool=callgrind", "--instr-atstart=no", "--cache-sim=yes",
               "--dump-line=no", f"--callgrind-out-file={out}", f"--log-file={os.path.join(tmp, 'valgrind.log')}",
               f"--LL={llc.size},{llc.ways},{llc.line}", sys.executable, "-m", "tstack.studies.llc", job]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TstackError(f"LLC simulation of {len(modules)} variant(s) did not finish in {timeout:g} s") from None
        if r.returncode != 0:
            lines = [x for x in r.stderr.splitlines() if x.strip()]
            raise TstackError(f"LLC simulation failed: {lines[-1] if lines else f'exit status {r.returncode}'}")
        dumps = dict(_read_dump(p) for p in glob.glob(out + ".*"))
    return [LLCStat(v, d.get("DLmr", 0) + d.get("DLmw", 0), d.get("Ir", 0), True)
            for v in modules if (d := dumps.get(DUMP_PREFIX + v)) is not None]


def _read_dump(path: str) -> tuple[str, dict[str, int]]:
    """(dump label, event totals) of one callgrind dump file."""
    name, events, totals = "", [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("desc: Trigger: Client Request: "):
                name = line.split(": ", 3)[-1].strip()
            elif line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith(("totals:", "summary:")) and not totals:
                totals = [int(x) for x in line.split()[1:]]
    return name, {e: (totals[i] if i < len(totals) else 0) for i, e in enumerate(events)}


def _run_under_callgrind(path: str) -> None:
    """Subprocess side: for each variant, warm up, then (start, run, zero, run, dump, stop) under client requests."""
    from tstack.profiler.runop import ClientRequests
    from tstack.profiler.runtime import RuntimeConfig, controlled

    cr = ClientRequests()
    if not cr.running_on_valgrind():
        raise TstackError("python -m tstack.studies.llc must run under valgrind --tool=callgrind")
    job = torch.load(path, weights_only=False)  # modules pickled by the parent from tstack's own classes
    inputs = job["inputs"]
    with controlled(RuntimeConfig(threads=1)), torch.no_grad():
        for v, m in job["modules"].items():
            label = cr.name(DUMP_PREFIX + v)
            m(*inputs)
            cr.start()
            m(*inputs)
            cr.zero()
            m(*inputs)
            cr.dump(label)
            cr.stop()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m tstack.studies.llc JOB.pt", file=sys.stderr)
        return 2
    try:
        _run_under_callgrind(argv[0])
    except TstackError as e:
        print(str(e).replace("\n", " "), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

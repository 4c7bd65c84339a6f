"""tstack's accelerator model next to SCALE-Sim and ZigZag on the same BERT-base GEMMs, in the same run.

    python benchmarks/accel_speed.py [--hw gemmini-baseline] [--tools scalesim,zigzag|none] [--scratch DIR]
                                     [--no-install] [--timeout 600] [--scalesim-max-cycles 2000000] [--no-model]

For each GEMM C[I×J] = A[I×K]·B[K×J] (I = tokens, J = output features, K = reduction; attention runs ``batch``
heads) the script prints tstack's cycles with ``mapping=auto`` (Gemmini's ``tiled_matmul_auto`` tiling) and
``mapping=best`` (the mapping search), the cycles SCALE-Sim and ZigZag give for the same GEMM on a 16×16
weight-stationary int8 array with gemmini-baseline's memory sizes, the ratio of each tool to tstack, and how long
each took (tstack: milliseconds per GEMM, best of --repeat calls; tools: seconds per GEMM, excluding the
interpreter start and import, which are reported once per tool). Goals (issues 6 and 14): ``mapping=auto`` < 1 ms
and ``mapping=best`` <= 10 ms per GEMM. The host state (load average, CPU) is printed before and after, because
the tools' wall times and tstack's milliseconds depend on what else runs on the machine. tstack's timings run
under SCHED_FIFO priority 20 (what ``chrt -f 20`` does) when the OS permits it; installs and the tools' runs keep
the normal policy (minutes of a real-time process would starve the other users of a shared machine).

Tools and their environments
    Each tool lives in a scratch virtual environment that this script creates and reuses:
    ``<scratch>/scalesim-py3XX`` (``scalesim==3.0.0`` with ``numpy<2``: SCALE-Sim 3.0 fails on NumPy 2) and
    ``<scratch>/zigzag-py3XX`` (``zigzag-dse==3.9.1`` plus ``six``, which it imports but does not declare).
    <scratch> is ``~/.cache/tstack-bench`` unless --scratch says otherwise; packages come from PyPI through pip.
    An environment is built under ``<name>.partial`` and renamed when its import check passes, so an interrupted
    install is never reused. ``--scalesim-python``/``--zigzag-python`` use an existing interpreter instead.
    Every tool input (SCALE-Sim config, GEMM topology and layout CSVs; ZigZag accelerator, workload and mapping
    YAML) is written into a temporary folder, and each GEMM runs as its own subprocess with --timeout seconds.
    A tool that cannot be installed, imported or run prints one line saying why; the others go on.

What each tool models, and why its cycles differ from tstack's
    tstack (``tstack.accel``): Gemmini's software and hardware as the RTL runs them: the tiling of
    ``tiled_matmul_auto`` (or a searched one), one ``loop_ws`` call per tile with its software cost, the mesh
    fill/drain per block with preload overlapped (weights double-buffered in the PEs), and the DMA that moves
    each tile between DRAM/L2 and the scratchpad/accumulator (request sizes, requests in flight, latency,
    bandwidth) overlapped with compute, plus the exposed final store. Its cycles are the ones the FireSim RTL
    measurements of issue 14 are compared against; the model's details change with that issue.
    SCALE-Sim 3.0 (GEMM mode, ``InterfaceBandwidth = CALC``): a cycle-stepped simulation of the systolic array
    alone. The WS mapping is fixed: the K×J weight matrix is cut into ceil(K/R)·ceil(J/C) folds of R×C, each
    fold preloads its weights, streams the I rows of A and drains: 2R + C + I − 2 cycles per fold, with no
    overlap of a fold's preload with the previous fold's compute. In CALC mode SCALE-Sim *estimates* the DRAM
    bandwidth that keeps the array from stalling, so stalls are 0 and it ignores DMA latency, request limits,
    the L2, the software's tiling and the per-call overhead. Its cycles are therefore the mesh-only bound of an
    un-double-buffered array: above tstack's where tstack's tiles overlap preload with compute, below it where
    tstack's tiles are DMA-bound. Reported: ``Total Cycles`` of COMPUTE_REPORT.csv (compute + stalls, equal to
    the fold formula; the ``incl. prefetch`` column adds the initial SRAM fill). It steps every cycle in Python
    (about 10k cycles/s on one core here), so GEMMs whose fold formula exceeds --scalesim-max-cycles are skipped
    with the projected time instead of being run.
    ZigZag (zigzag-dse 3.9.1): an analytical loop-nest cost model with a mapping search (LOMA temporal mapping
    search, latency objective) over a memory hierarchy of PE registers (weight, partial sum), a shared
    scratchpad for A and B, an accumulator for C and DRAM, each with read/write port bandwidths in bits per
    cycle. Latency = ideal temporal cycles + stalls where a memory port's bandwidth is short (computed per
    level, overlapping with compute) + initial onloading + final offloading + one systolic drain. It has no
    memory latency (the ``latency`` field of a memory is not used by its cost model), no request-level DMA, no
    per-tile fill/drain of the mesh and no software call overhead, and it chooses its own loop order and tile
    sizes: its cycles are close to MACs/DIM² whenever the bandwidths suffice, a lower bound for tstack's.
    Batched GEMMs (attention heads) are run once per tool and multiplied by ``batch``: neither tool carries state
    between heads, and Gemmini runs the heads one after another.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

TOOLS = ("scalesim", "zigzag")
LABELS = {"scalesim": "SCALE-Sim", "zigzag": "ZigZag"}
REQUIREMENTS = {"scalesim": ("scalesim==3.0.0", "numpy<2"), "zigzag": ("zigzag-dse==3.9.1", "six")}
MODULES = {"scalesim": "scalesim.scale_sim", "zigzag": "zigzag.api"}
MARKER = "tstack-bench.json"


@dataclass(frozen=True)
class Gemm:
    """C[I×J] = A[I×K]·B[K×J], ``batch`` times (I = tokens, J = output features, K = reduction)."""

    label: str
    I: int  # noqa: E741 - Gemmini's name for the rows of A
    J: int
    K: int
    batch: int = 1

    @property
    def shape(self) -> str:
        return f"{self.I}×{self.J}×{self.K}" + (f"×{self.batch}" if self.batch > 1 else "")

    @property
    def macs(self) -> int:
        return self.I * self.J * self.K * self.batch


# BERT-base at sequence lengths 128 and 512: the four attention projections (Q, K, V, output), the FFN's two
# GEMMs, and the attention scores Q·Kᵀ of the 12 heads (head size 64).
GEMMS = (
    Gemm("attn.proj", 128, 768, 768),
    Gemm("ffn.fc1", 128, 3072, 768),
    Gemm("ffn.fc2", 128, 768, 3072),
    Gemm("attn.proj", 512, 768, 768),
    Gemm("ffn.fc1", 512, 3072, 768),
    Gemm("ffn.fc2", 512, 768, 3072),
    Gemm("attn.scores", 512, 512, 64, 12),
)


@dataclass(frozen=True)
class Array:
    """What the tools are told about the accelerator (from the tstack accelerator file when it loads)."""

    name: str
    dim: int = 16
    dataflow: str = "WS"
    spad_bytes: int = 256 * 1024
    acc_bytes: int = 64 * 1024
    bus_bytes: int = 16


@dataclass
class Cell:
    """One GEMM's result from one source: cycles, seconds, or why there is none."""

    cycles: float | None = None
    seconds: float | None = None
    why: str = ""
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------- host state


def host_state() -> str:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"load average {load} (1/5/15 min); {usable} of {os.cpu_count()} CPUs usable; {cpu}; "
            f"Python {platform.python_version()}")


class Realtime:
    """SCHED_FIFO priority 20 (as ``chrt -f 20``) around the tstack timings, when permitted."""

    def __init__(self, wanted: bool):
        self.state = "off (--no-realtime)"
        self.ok = False
        if not wanted:
            return
        if not hasattr(os, "sched_setscheduler"):
            self.state = "not available on this OS"
            return
        try:
            old = os.sched_getscheduler(0), os.sched_getparam(0)
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(20))
            os.sched_setscheduler(0, old[0], old[1])
            self.ok, self.state = True, "SCHED_FIFO 20 (chrt -f 20) during tstack timings"
        except OSError as e:
            self.state = f"chrt -f 20 not permitted ({e.strerror}); normal priority"

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        if not self.ok:
            yield
            return
        old = os.sched_getscheduler(0), os.sched_getparam(0)
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(20))
        try:
            yield
        finally:
            os.sched_setscheduler(0, old[0], old[1])


def one_line(text: str, limit: int = 160) -> str:
    lines = [x.strip() for x in text.strip().splitlines() if x.strip() and not x.lstrip().startswith("WARNING")]
    line = lines[-1] if lines else "(no message)"
    return line if len(line) <= limit else line[: limit - 1] + "…"


# ---------------------------------------------------------------------------------------------------- tstack


def tstack_array(hw_name: str) -> tuple[object | None, Array, str]:
    """The loaded AccelSpec (or None), the array the tools see, and a note when the file did not load."""
    try:
        from tstack.hardware.accel import load_accel

        hw = load_accel(hw_name)
    except Exception as e:  # noqa: BLE001 - the model may be mid-change; say why and go on with the tools
        return None, Array(name=f"{hw_name} (defaults)"), (
            f"tstack: cannot load accelerator {hw_name!r}: {type(e).__name__}: {one_line(str(e))}; "
            "tools use gemmini-baseline's sizes (16×16 WS, 256 KiB scratchpad, 64 KiB accumulator, 16 B/cycle)")
    arr = Array(name=hw.name, dim=hw.dim, dataflow=hw.mesh.dataflow, spad_bytes=hw.scratchpad.bytes,
                acc_bytes=hw.accumulator.bytes, bus_bytes=hw.dma.bus_bytes_per_cycle)
    return hw, arr, ""


def _best_time(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def tstack_gemm(hw, gemm: Gemm, mapping: str, repeat: int, realtime: Realtime) -> Cell:
    try:
        from tstack.accel.mapping import mapper
        from tstack.accel.timing import GemmShape

        fn = mapper(mapping, "latency")
        shape = GemmShape(gemm.I, gemm.J, gemm.K, gemm.batch)
        m, timing = fn(hw, shape, False, 1)
        with realtime():
            secs = _best_time(lambda: fn(hw, shape, False, 1), repeat)
    except Exception as e:  # noqa: BLE001
        return Cell(why=f"{type(e).__name__}: {one_line(str(e))}")
    tiles = ",".join(str(getattr(m, k)) for k in ("ti", "tj", "tk") if hasattr(m, k))
    return Cell(cycles=float(timing.cycles), seconds=secs, extra={"tiles": tiles})


def whole_model(hw, repeat: int, realtime: Realtime) -> list[str]:
    """Issue 6's figure: every op of BERT-base (seq 512) mapped and costed, per mapper."""
    try:
        from tstack.accel.model import run
    except Exception as e:  # noqa: BLE001
        return [f"whole model: tstack.accel.model.run unavailable ({type(e).__name__}: {one_line(str(e))})"]
    out = []
    for mapping in ("auto", "best"):
        try:
            result = run("bert-base", 512, hw, mapping=mapping)
            gemms = sum(1 for r in result.records if getattr(r, "timing", None) is not None)
            with realtime():
                secs = _best_time(lambda m=mapping: run("bert-base", 512, hw, mapping=m),
                                  1 if mapping == "best" else repeat)
            out.append(f"whole model bert-base seq 512, mapping={mapping}: {len(result.records)} ops "
                       f"({gemms} distinct GEMMs) in {secs * 1e3:.1f} ms = {secs / max(gemms, 1) * 1e3:.2f} ms "
                       f"per GEMM; model latency {result.seconds * 1e3:.2f} ms")
        except Exception as e:  # noqa: BLE001
            out.append(f"whole model mapping={mapping}: failed ({type(e).__name__}: {one_line(str(e))})")
    return out


# ---------------------------------------------------------------------------------------------------- environments


def ensure_env(tool: str, scratch: Path, install: bool, timeout: float) -> tuple[str | None, str]:
    """(python of the tool's venv, status line). Reuses a finished venv; builds one under .partial otherwise."""
    reqs = list(REQUIREMENTS[tool])
    venv = scratch / f"{tool}-py{sys.version_info.major}{sys.version_info.minor}"
    python = venv / "bin" / "python"
    marker = venv / MARKER
    if marker.is_file() and python.exists():
        try:
            recorded = json.loads(marker.read_text())
        except (OSError, ValueError):
            recorded = {}
        if recorded.get("requirements") == reqs:
            ok, why = import_check(str(python), tool)
            if ok:
                return str(python), f"reused {venv} (installed in {recorded.get('install_seconds', 0):.0f} s)"
            return None, f"{venv} exists but {why}; delete it to reinstall"
        if not install:
            return None, f"{venv} holds {recorded.get('requirements')}, not {reqs} (--no-install)"
    if not install:
        return None, f"no environment at {venv} (--no-install)"
    if venv.exists() and not marker.is_file():
        return None, f"{venv} exists but was not made by this script: remove it or pass another --scratch"
    partial = venv.with_name(venv.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # a previous interrupted install of this script
    t0 = time.perf_counter()
    error = _build(partial, reqs, timeout)
    secs = time.perf_counter() - t0
    if not error:
        ok, why = import_check(str(partial / "bin" / "python"), tool)
        error = "" if ok else f"installed {' '.join(reqs)} but {why}"
    if error:
        shutil.rmtree(partial, ignore_errors=True)
        return None, error
    (partial / MARKER).write_text(json.dumps({"requirements": reqs, "install_seconds": round(secs, 1)}))
    if venv.exists():
        shutil.rmtree(venv)  # ours (its marker names other requirements): replaced by the fresh one
    partial.rename(venv)  # the interpreter is used as <venv>/bin/python -m ..., never through moved scripts
    return str(python), f"installed {' '.join(reqs)} into {venv} in {secs:.0f} s"


def _build(folder: Path, reqs: list[str], timeout: float) -> str:
    """Create a venv at ``folder`` and pip-install ``reqs`` into it; '' or why it failed (one line)."""
    t0 = time.perf_counter()
    steps = (("venv", [sys.executable, "-m", "venv", str(folder)]),
             (f"pip install {' '.join(reqs)}", [str(folder / "bin" / "python"), "-m", "pip", "install", "-q",
                                                "--disable-pip-version-check", *reqs]))
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        for what, cmd in steps:
            left = timeout - (time.perf_counter() - t0)
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=max(left, 1), check=False)
            if res.returncode:
                return f"{what} failed: {one_line(res.stderr or res.stdout)}"
    except subprocess.TimeoutExpired:
        return f"install did not finish in {timeout:.0f} s (--install-timeout)"
    except OSError as e:
        return f"install failed: {e}"
    return ""


def import_check(python: str, tool: str) -> tuple[bool, str]:
    try:
        res = subprocess.run([python, "-c", f"import {MODULES[tool]}"], capture_output=True, text=True,
                             timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"{python} cannot run ({e})"
    return (True, "") if res.returncode == 0 else (False, f"import {MODULES[tool]} fails: {one_line(res.stderr)}")


# ---------------------------------------------------------------------------------------------------- drivers

# Each driver runs in the tool's venv, prints one JSON line last: cycles, run seconds, import seconds, details.
SCALESIM_DRIVER = r'''
import contextlib, csv, io, json, sys, time
t0 = time.perf_counter()
from scalesim.scale_sim import scalesim
t1 = time.perf_counter()
cfg, topo, layout, out = sys.argv[1:5]
with contextlib.redirect_stdout(io.StringIO()):
    s = scalesim(save_disk_space=True, verbose=False, config=cfg, topology=topo, layout=layout, input_type_gemm=True)
    s.run_scale(top_path=out)
t2 = time.perf_counter()
with open(f"{out}/tstack/COMPUTE_REPORT.csv") as f:
    rows = [[x.strip() for x in r] for r in csv.reader(f)]
row = rows[1]
print(json.dumps({"cycles": float(row[2]), "seconds": t2 - t1, "import_seconds": t1 - t0,
                  "extra": {"incl_prefetch": float(row[1]), "stalls": float(row[3]), "util_pct": float(row[4])}}))
'''

ZIGZAG_DRIVER = r'''
import json, logging, sys, time
t0 = time.perf_counter()
from zigzag.api import get_hardware_performance_zigzag
t1 = time.perf_counter()
workload, accel, mapping, out = sys.argv[1:5]
energy, latency, cmes = get_hardware_performance_zigzag(workload, accel, mapping, opt="latency", dump_folder=out,
                                                        loma_show_progress_bar=False)
t2 = time.perf_counter()
extra = {}
try:
    layer = cmes[0][1][0][0]
    for k in ("ideal_cycle", "stall_slack_comb", "data_onloading_cycle", "data_offloading_cycle", "systolic_drain_cycle"):
        extra[k] = float(getattr(layer, k))
    extra["temporal_mapping"] = str(layer.temporal_mapping)
except Exception as e:
    extra["detail"] = f"no per-layer breakdown: {e}"
print(json.dumps({"cycles": float(latency), "seconds": t2 - t1, "import_seconds": t1 - t0, "extra": extra}))
'''


def scalesim_fold_cycles(arr: Array, g: Gemm) -> int:
    """SCALE-Sim's WS cycle count in closed form (folds × (2R + C + T − 2)), per batch element."""
    folds = math.ceil(g.K / arr.dim) * math.ceil(g.J / arr.dim)
    return folds * (2 * arr.dim + arr.dim + g.I - 2)


def scalesim_inputs(arr: Array, g: Gemm, folder: Path) -> list[str]:
    folder.mkdir(parents=True)
    half_kib = arr.spad_bytes // 2 // 1024  # Gemmini's one scratchpad holds A and B: half each
    bank_bytes = arr.dim  # one DIM-wide int8 row per bank per cycle
    (folder / "gemmini.cfg").write_text(f"""[general]
run_name = tstack

[architecture_presets]
ArrayHeight = {arr.dim}
ArrayWidth = {arr.dim}
IfmapSramSzkB = {half_kib}
FilterSramSzkB = {half_kib}
OfmapSramSzkB = {arr.acc_bytes // 1024}
IfmapOffset = 0
FilterOffset = 10000000
OfmapOffset = 20000000
Dataflow = {arr.dataflow.lower()}
ReadRequestBuffer = 32
WriteRequestBuffer = 32
Bandwidth = {arr.bus_bytes}

[layout]
IfmapCustomLayout = False
IfmapSRAMBankBandwidth = {bank_bytes}
IfmapSRAMBankNum = 4
IfmapSRAMBankPort = 1
FilterCustomLayout = False
FilterSRAMBankBandwidth = {bank_bytes}
FilterSRAMBankNum = 4
FilterSRAMBankPort = 1

[sparsity]
SparsitySupport = false

[run_presets]
InterfaceBandwidth = CALC
UseRamulatorTrace = False
""")
    # GEMM topology: M rows of the input (I tokens), N filters (J), K reduction; each row ends with a comma
    (folder / "topology.csv").write_text(f"Layer, M, N, K,\ngemm, {g.I}, {g.J}, {g.K},\n")
    (folder / "layout.csv").write_text("Layer,\n")  # read even when no custom layout is used
    return [str(folder / "gemmini.cfg"), str(folder / "topology.csv"), str(folder / "layout.csv"),
            str(folder / "out")]


def _port(name: str, kind: str, bits: int, *allocation: str) -> dict:
    return {"name": name, "type": kind, "bandwidth_min": min(8, bits), "bandwidth_max": bits,
            "allocation": list(allocation)}


def zigzag_inputs(arr: Array, g: Gemm, folder: Path) -> list[str]:
    """Accelerator, workload and mapping files (JSON, which ZigZag's YAML reader accepts)."""
    folder.mkdir(parents=True)
    d, row_bits, acc_row_bits, bus_bits = arr.dim, arr.dim * 8, arr.dim * 32, arr.bus_bytes * 8
    accel = {
        "name": f"{arr.name}-like",
        "operational_array": {"input_precision": [8, 8], "unit_energy": 0.3, "unit_area": 1,
                              "dimensions": ["D1", "D2"], "sizes": [d, d], "systolic_dimensions": ["D1", "D2"]},
        "memories": {
            # per PE: two weight registers (double-buffered preload) and the int32 partial sum
            "rf_w": {"size": 16, "r_cost": 0.03, "w_cost": 0.03, "area": 0, "latency": 1, "operands": ["I2"],
                     "ports": [_port("r_port_1", "read", 8, "I2, tl"), _port("w_port_1", "write", 8, "I2, fh")],
                     "served_dimensions": []},
            "rf_o": {"size": 32, "r_cost": 0.03, "w_cost": 0.03, "area": 0, "latency": 1, "operands": ["O"],
                     "ports": [_port("r_port_1", "read", 32, "O, tl"), _port("r_port_2", "read", 32, "O, th"),
                               _port("w_port_1", "write", 32, "O, fh"), _port("w_port_2", "write", 32, "O, fl")],
                     "served_dimensions": []},
            # the accumulator: one DIM-wide int32 row read and written per cycle (dual-ported)
            "accumulator": {"size": arr.acc_bytes * 8, "r_cost": 80, "w_cost": 80, "area": 0, "latency": 1,
                            "operands": ["O"],
                            "ports": [_port("r_port_1", "read", acc_row_bits, "O, tl", "O, th"),
                                      _port("w_port_1", "write", acc_row_bits, "O, fh", "O, fl")],
                            "served_dimensions": ["D1", "D2"]},
            # the scratchpad: A and B share it; one DIM-wide int8 row each per cycle; DMA writes at bus width
            "scratchpad": {"size": arr.spad_bytes * 8, "r_cost": 20, "w_cost": 20, "area": 0, "latency": 1,
                           "operands": ["I1", "I2"],
                           "ports": [_port("r_port_1", "read", row_bits, "I1, tl"),
                                     _port("r_port_2", "read", row_bits, "I2, tl"),
                                     _port("w_port_1", "write", bus_bits, "I1, fh", "I2, fh")],
                           "served_dimensions": ["D1", "D2"]},
            # DRAM behind the DMA bus (bus_bytes per cycle); ZigZag does not use a memory's latency
            "dram": {"size": 10**10, "r_cost": 1952, "w_cost": 1952, "area": 0, "latency": 1,
                     "operands": ["I1", "I2", "O"],
                     "ports": [_port("rw_port_1", "read_write", bus_bits, "I1, fh", "I1, tl", "I2, fh", "I2, tl",
                                     "O, fh", "O, tl", "O, fl", "O, th")],
                     "served_dimensions": ["D1", "D2"]},
        },
    }
    # loop dims: D = I (tokens), C = K (reduction), K = J (output features), as ZigZag names a layer's dims
    workload = [{"id": 0, "name": "gemm", "operator_type": "Gemm", "equation": "O[d][k]+=I[d][c]*W[c][k]",
                 "loop_dims": ["D", "C", "K"], "loop_sizes": [g.I, g.K, g.J],
                 "operand_precision": {"W": 8, "I": 8, "O": 32, "O_final": 8}, "operand_source": {"I": 0}}]
    # weight stationary: the reduction down the mesh rows, output features across its columns
    mapping = [{"name": "default", "spatial_mapping": {"D1": [f"C, {d}"], "D2": [f"K, {d}"]},
                "memory_operand_links": {"O": "O", "W": "I2", "I": "I1"}}]
    for name, doc in (("accelerator.yaml", accel), ("workload.yaml", workload), ("mapping.yaml", mapping)):
        (folder / name).write_text(json.dumps(doc, indent=1))
    return [str(folder / "workload.yaml"), str(folder / "accelerator.yaml"), str(folder / "mapping.yaml"),
            str(folder / "out")]


def run_driver(python: str, driver: Path, argv: list[str], cwd: Path, timeout: float) -> tuple[Cell, float]:
    """One GEMM through one tool: (result, import seconds)."""
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTHONPATH", None)
    t0 = time.perf_counter()
    try:
        res = subprocess.run([python, str(driver), *argv], capture_output=True, text=True, timeout=timeout,
                             cwd=cwd, env=env, check=False)
    except subprocess.TimeoutExpired:
        return Cell(why=f"timed out after {timeout:.0f} s (--timeout)"), 0.0
    wall = time.perf_counter() - t0
    last = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""
    try:
        doc = json.loads(last)
    except ValueError:
        return Cell(why=f"exit {res.returncode} after {wall:.0f} s: {one_line(res.stderr or res.stdout)}"), 0.0
    return Cell(cycles=doc["cycles"], seconds=doc["seconds"], extra=doc.get("extra", {})), doc["import_seconds"]


# ---------------------------------------------------------------------------------------------------- main


def fmt_int(x: float | None) -> str:
    return "—" if x is None else f"{x:,.0f}"


def fmt_ratio(a: float | None, b: float | None) -> str:
    return "—" if a is None or not b else f"{a / b:.3f}"


def fmt_secs(x: float | None, scale: float, digits: int) -> str:
    return "—" if x is None else f"{x * scale:.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hw", default="gemmini-baseline", help="tstack accelerator preset or file")
    ap.add_argument("--tools", default="scalesim,zigzag", help="comma-separated: scalesim, zigzag, or none")
    ap.add_argument("--scratch", type=Path, default=Path.home() / ".cache" / "tstack-bench",
                    help="folder of the tools' virtual environments")
    ap.add_argument("--no-install", action="store_true", help="use existing environments only")
    ap.add_argument("--install-timeout", type=float, default=900.0)
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per tool run (one GEMM)")
    ap.add_argument("--scalesim-max-cycles", type=float, default=2e6,
                    help="skip SCALE-Sim on GEMMs whose fold formula exceeds this many cycles (it steps each one)")
    ap.add_argument("--scalesim-python", help="use this interpreter for SCALE-Sim instead of a managed venv")
    ap.add_argument("--zigzag-python", help="use this interpreter for ZigZag instead of a managed venv")
    ap.add_argument("--repeat", type=int, default=5, help="tstack calls timed per GEMM (auto; best uses half)")
    ap.add_argument("--no-model", action="store_true", help="skip the whole-model BERT-base timing")
    ap.add_argument("--no-realtime", action="store_true", help="do not try SCHED_FIFO 20 for tstack timings")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder of tool inputs and outputs")
    a = ap.parse_args()
    tools = [] if a.tools.strip() == "none" else [t.strip() for t in a.tools.split(",") if t.strip()]
    bad = [t for t in tools if t not in TOOLS]
    if bad or a.repeat < 1 or a.timeout <= 0:
        ap.error(f"--tools must name {', '.join(TOOLS)} or none; --repeat >= 1; --timeout > 0 (got {a.tools!r}, "
                 f"{a.repeat}, {a.timeout})")

    print(f"host before: {host_state()}")
    realtime = Realtime(not a.no_realtime)
    print(f"scheduling: {realtime.state}")
    hw, arr, note = tstack_array(a.hw)
    if note:
        print(note)
    print(f"array given to the tools: {arr.dim}×{arr.dim} {arr.dataflow} int8, scratchpad {arr.spad_bytes // 1024} KiB "
          f"(A and B), accumulator {arr.acc_bytes // 1024} KiB (int32), DRAM bus {arr.bus_bytes} B/cycle "
          f"[{arr.name}]")

    results: dict[str, list[Cell]] = {}
    if hw is not None:
        for mapping, repeat in (("auto", a.repeat), ("best", max(1, a.repeat // 2))):
            results[mapping] = [tstack_gemm(hw, g, mapping, repeat, realtime) for g in GEMMS]
            for g, c in zip(GEMMS, results[mapping]):
                if c.why:
                    print(f"tstack mapping={mapping} {g.label} {g.shape}: {c.why}")
    else:
        for mapping in ("auto", "best"):
            results[mapping] = [Cell(why="accelerator did not load") for _ in GEMMS]

    setup: dict[str, str] = {}
    imports: dict[str, float] = {}
    tmp = Path(tempfile.mkdtemp(prefix="tstack-accel-speed-"))
    try:
        for tool in tools:
            cells: list[Cell] = []
            given = getattr(a, f"{tool}_python")
            t0 = time.perf_counter()
            if given:
                ok, why = import_check(given, tool)
                python, status = (given, f"given interpreter {given}") if ok else (None, why)
            else:
                python, status = ensure_env(tool, a.scratch, not a.no_install, a.install_timeout)
            setup[tool] = f"{status} [{time.perf_counter() - t0:.0f} s]"
            print(f"{LABELS[tool]}: {setup[tool]}")
            if python is None:
                results[tool] = [Cell(why="not available") for _ in GEMMS]
                continue
            driver = tmp / f"{tool}_driver.py"
            driver.write_text(SCALESIM_DRIVER if tool == "scalesim" else ZIGZAG_DRIVER)
            rate = None  # SCALE-Sim simulated cycles per second, once one run is done
            for i, g in enumerate(GEMMS):
                folder = tmp / tool / f"{i}-{g.label}-{g.I}x{g.J}x{g.K}"
                if tool == "scalesim":
                    est = scalesim_fold_cycles(arr, g)
                    if est > a.scalesim_max_cycles:
                        eta = f", about {est / rate / 60:.0f} min at this run's {rate / 1e3:.0f}k cycles/s" if rate else ""
                        cell = Cell(why=f"skipped: {est / 1e6:.2f} M simulated cycles > --scalesim-max-cycles "
                                        f"{a.scalesim_max_cycles:,.0f}{eta}")
                        print(f"{LABELS[tool]} {g.label} {g.shape}: {cell.why}")
                        cells.append(cell)
                        continue
                    argv = scalesim_inputs(arr, g, folder)
                else:
                    argv = zigzag_inputs(arr, g, folder)
                cell, imp = run_driver(python, driver, argv, folder, a.timeout)
                if cell.cycles is not None:
                    imports[tool] = imp
                    if tool == "scalesim" and cell.seconds:
                        rate = cell.cycles / cell.seconds
                    cell.cycles *= g.batch  # one head simulated; the heads run one after another
                    print(f"{LABELS[tool]} {g.label} {g.shape}: {cell.cycles:,.0f} cycles in {cell.seconds:.1f} s"
                          + (" (one head × batch)" if g.batch > 1 else ""), flush=True)
                else:
                    print(f"{LABELS[tool]} {g.label} {g.shape}: {cell.why}", flush=True)
                cells.append(cell)
            results[tool] = cells
    finally:
        if a.keep:
            print(f"tool inputs and outputs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    # -------------------------------------------------------------------------------------------- the table
    empty = [Cell() for _ in GEMMS]
    auto, best = results["auto"], results["best"]
    ss, zz = results.get("scalesim", empty), results.get("zigzag", empty)
    head = ["GEMM", "I×J×K(×b)", "ideal", "auto", "best", "SCALE-Sim", "ZigZag", "SS/auto", "SS/best", "ZZ/auto",
            "ZZ/best", "auto ms", "best ms", "SS s", "ZZ s", "auto tiles", "best tiles"]
    rows = []
    for k, g in enumerate(GEMMS):
        rows.append([g.label, g.shape, fmt_int(g.macs / arr.dim**2), fmt_int(auto[k].cycles), fmt_int(best[k].cycles),
                     fmt_int(ss[k].cycles), fmt_int(zz[k].cycles),
                     fmt_ratio(ss[k].cycles, auto[k].cycles), fmt_ratio(ss[k].cycles, best[k].cycles),
                     fmt_ratio(zz[k].cycles, auto[k].cycles), fmt_ratio(zz[k].cycles, best[k].cycles),
                     fmt_secs(auto[k].seconds, 1e3, 3), fmt_secs(best[k].seconds, 1e3, 2),
                     fmt_secs(ss[k].seconds, 1, 1), fmt_secs(zz[k].seconds, 1, 1),
                     auto[k].extra.get("tiles", "—"), best[k].extra.get("tiles", "—")])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    print()
    print(f"cycles on {arr.name} ({arr.dim}×{arr.dim} {arr.dataflow}); ideal = MACs / {arr.dim}²; "
          "ratios are tool / tstack; times are per GEMM")
    for r in [head, *rows]:
        print("  ".join(x.ljust(w) if i < 2 or i >= len(head) - 2 else x.rjust(w)
                        for i, (x, w) in enumerate(zip(r, widths))))

    for mapping, goal in (("auto", 1.0), ("best", 10.0)):
        secs = [c.seconds for c in results[mapping] if c.seconds is not None]
        if secs:
            mean, worst = sum(secs) / len(secs) * 1e3, max(secs) * 1e3
            print(f"tstack mapping={mapping}: {mean:.3f} ms per GEMM on average, {worst:.3f} ms worst "
                  f"over {len(secs)} GEMMs (goal <= {goal:g} ms: {'met' if worst <= goal else 'NOT met'})")
    for tool in tools:
        done = [c for c in results[tool] if c.seconds is not None]
        if done:
            print(f"{LABELS[tool]}: {sum(c.seconds for c in done):.1f} s for {len(done)} GEMMs "
                  f"(+ {imports.get(tool, 0):.1f} s interpreter start and import per run); setup: {setup[tool]}")
        else:
            print(f"{LABELS[tool]}: no result; setup: {setup[tool]}")
    for k, g in enumerate(GEMMS):
        if zz[k].extra.get("temporal_mapping"):
            e = zz[k].extra
            print(f"ZigZag {g.label} {g.shape}: ideal {e['ideal_cycle']:,.0f} + stalls {e['stall_slack_comb']:,.0f} "
                  f"+ onload {e['data_onloading_cycle']:,.0f} + offload {e['data_offloading_cycle']:,.0f} "
                  f"+ drain {e['systolic_drain_cycle']:,.0f} (one head)")

    if hw is not None and not a.no_model:
        for line in whole_model(hw, a.repeat, realtime):
            print(line)
    print(f"host after: {host_state()}")


if __name__ == "__main__":
    main()

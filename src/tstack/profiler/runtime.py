"""The controlled runtime of a measurement: device, thread count, flush-to-zero, TF32, allocator policy.

``RuntimeConfig`` says how ops are run; ``controlled(cfg)`` applies it for the duration of a
``with`` block and restores what it changed; ``describe(cfg)`` is the one-line description that
goes with every measured figure.

Threads. ``torch.set_num_threads(cfg.threads)`` fixes the intra-op (OpenMP) pool; 0 in the config
means the CPUs this process may run on. Timings on a machine shared with other CPU-heavy jobs are
noisy whatever the setting: with as many threads as cores, a pre-empted worker stalls the OpenMP
barrier for a scheduler slice (milliseconds), so medians, not means, are reported.

Flush-to-zero. ``torch.set_flush_denormal(True)`` sets FTZ and DAZ in the MXCSR register of the
*calling thread only*: the OpenMP worker threads that already exist keep their own MXCSR, so on
2 threads half of a large tensor's subnormal results are still produced (and are slow). On x86
with GNU OpenMP (PyTorch's CPU wheels bundle libgomp) ``controlled`` therefore also runs
``torch.set_flush_denormal`` inside one OpenMP parallel region of the same libgomp, so that every
thread of the team sets its own register (``ftz_all_threads``); threads created later inherit the
register from the thread that creates them. Where that is not possible the description says
``FTZ/DAZ on (main thread only)``. GPUs handle denormals at full speed (003 §IV, footnote 2): FTZ is a CPU
setting.

Allocator policy. PyTorch's CPU allocator is glibc ``malloc``: a tensor above the mmap threshold
(128 KiB, raised dynamically up to 32 MiB after frees) is mmap'ed and returned to the kernel on
free, so an op that allocates its output each call also pays page faults on every fresh page.
Whether it does depends on the glibc tunables and the allocation history of the process, which
is why allocating each call makes timings unreproducible. The profiler takes the allocator out
of the timed loop instead of tuning it: ``opexec.prepare`` allocates every input, output and
scratch buffer once per op, and ``run()`` launches the kernels with ``out=`` variants or in place,
so the timed loop does no allocation (the dropout mask, the LayerNorm statistics and the GEMM
output included; PyTorch still wraps a Python scalar operand in an 8-byte tensor, which comes from
malloc's small bins and costs no page fault). ``benchmarks/allocator.py`` times softmax over
12×512×512 and 48×512×512 fp32 scores both ways, under glibc's default policy and under a fixed
mmap threshold (``MALLOC_MMAP_THRESHOLD_=131072``, which switches the dynamic threshold off).
Medians of 30 on this 2-core Sapphire Rapids VM, 1 thread, while other jobs ran (load 1 to 6,
so the figures move by tens of percent between runs):

    policy            shape        preallocated  allocating each call  ratio
    glibc default     12×512×512   2.0-2.6 ms    2.7-2.9 ms            1.1-1.4×  (the freed block is
                                                                                 reused once the dynamic
                                                                                 threshold rose to 12.6 MB)
    glibc default     48×512×512   20-24 ms      63-64 ms              2.6-3.1×  (50 MB, above the
                                                                                 32 MiB cap: mmap per call)
    fixed threshold   12×512×512   2.0-4.8 ms    15-16 ms              3.3-7.5×  (every call mmaps and
                                                                                 faults in 12.6 MB)

The preallocated timing does not depend on the malloc policy; the allocating one changes by
up to 7× with it, which is the kind of effect (2.4× on attention) this machine showed before.
With 2 threads on the 2 busy cores, both variants of the 12.6 MB case read 16 ms: a pre-empted
worker holds the OpenMP barrier for a scheduler slice, so threads = cores is not a setting for
timing on a shared machine. On CUDA, buffers are preallocated the same way, so the caching
allocator is not exercised either.
"""

from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType

from tstack.errors import SpecError, TstackError

DEVICES = ("cpu", "cuda")
ALLOCATOR_POLICY = "preallocated buffers, out=/in-place kernels, no allocation in the timed loop"
MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX", "MALLOC_TOP_PAD_", "LD_PRELOAD")
# For benchmarks of modules that allocate per call: the mmap threshold at glibc's 32 MiB maximum turns the dynamic
# threshold off, and the trim threshold keeps freed heap memory, so a freed block is reused without page faults.
MALLOC_POLICY = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}

# What controlled() last set, innermost last; torch starts with FTZ off and has no getter for it.
_ftz_stack: list[bool] = [False]


def load_torch() -> ModuleType:
    """The ``torch`` module, imported on first use; a TstackError naming the install command without it."""
    try:
        import torch
    except ImportError as e:  # pragma: no cover - exercised only without torch
        raise TstackError("the profiler needs PyTorch: pip install torch (see README)") from e
    return torch


def reexec_with_malloc_policy(argv: list[str]) -> None:
    """Re-execute this Python with ``argv`` under ``MALLOC_POLICY`` unless it is in force (glibc reads it at start-up)."""
    import sys

    if any(os.environ.get(k) != v for k, v in MALLOC_POLICY.items()):
        os.execve(sys.executable, [sys.executable, *argv], {**os.environ, **MALLOC_POLICY})


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class RuntimeConfig:
    """How ops are run and timed; validated when constructed.

    ``threads`` = 0 means every CPU this process may use (resolved at construction, so the
    value is fixed and reported). ``tf32`` lets CUDA fp32 GEMMs use TF32 tensor cores (off by
    default: fp32 means fp32, as on the CPU).
    """

    device: str = "cpu"
    threads: int = 0
    flush_denormal: bool = True
    tf32: bool = False

    def __post_init__(self) -> None:
        problems = []
        if self.device not in DEVICES:
            problems.append(f"device={self.device!r} is not one of {', '.join(DEVICES)}")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 0:
            problems.append(f"threads={self.threads!r} must be an integer ≥ 1 (or 0: every usable CPU)")
        for name in ("flush_denormal", "tf32"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name}={getattr(self, name)!r} must be true or false")
        if problems:
            raise SpecError(problems, "runtime")
        if self.threads == 0:
            object.__setattr__(self, "threads", usable_cpus())

    @property
    def short_name(self) -> str:
        """Device name for a Breakdown: ``cpu-2t`` or ``cuda-<gpu>``."""
        if self.device == "cpu":
            return f"cpu-{self.threads}t"
        torch = load_torch()
        if not torch.cuda.is_available():
            return "cuda"
        name = torch.cuda.get_device_name().lower().replace("nvidia ", "")
        return "cuda-" + "-".join(name.split())

    def torch_device(self):
        return load_torch().device(self.device)


def _gomp() -> ctypes.CDLL | None:
    """The libgomp that torch loaded (found in this process's memory map), or None."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as f:
            paths = {line.split()[-1] for line in f if "libgomp" in line and line.rstrip().endswith((".so.1", ".so"))}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
            lib.GOMP_parallel  # noqa: B018 - the symbol must exist
            return lib
        except (OSError, AttributeError):
            continue
    return None


_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


def set_flush_denormal_all_threads(on: bool, threads: int) -> tuple[bool, bool]:
    """Set FTZ/DAZ in this thread and in every thread of the OpenMP team of ``threads``.

    Returns (supported, all_threads): whether the CPU supports it, and whether the worker
    threads were reached as well (GNU OpenMP found) rather than the calling thread only.
    """
    torch = load_torch()
    supported = bool(torch.set_flush_denormal(on))
    if not supported or threads <= 1:
        return supported, True
    gomp = _gomp()
    if gomp is None:
        return supported, False
    done: list[bool] = []

    def body(_: int | None) -> None:  # runs once in each thread of the team (ctypes takes the GIL)
        done.append(bool(torch.set_flush_denormal(on)))

    callback = _CALLBACK(body)
    gomp.GOMP_parallel.argtypes = [_CALLBACK, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    gomp.GOMP_parallel.restype = None
    gomp.GOMP_parallel(callback, None, threads, 0)
    return supported, len(done) == threads and all(done)


@dataclass(frozen=True)
class Applied:
    """What ``controlled`` could actually set (reported by ``describe``)."""

    ftz_supported: bool
    ftz_all_threads: bool


_applied: list[Applied] = []


@contextmanager
def controlled(cfg: RuntimeConfig) -> Iterator[Applied]:
    """Apply ``cfg`` (threads, FTZ/DAZ, TF32) inside the block; restore the previous settings after."""
    torch = load_torch()
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise TstackError("device='cuda' but torch.cuda.is_available() is false (CPU build of PyTorch or no GPU)")
    prev_threads = torch.get_num_threads()
    prev_precision = torch.get_float32_matmul_precision() if cfg.device == "cuda" else None
    prev_ftz = _ftz_stack[-1]
    torch.set_num_threads(cfg.threads)
    supported, all_threads = set_flush_denormal_all_threads(cfg.flush_denormal, cfg.threads)
    _ftz_stack.append(cfg.flush_denormal)
    applied = Applied(supported, all_threads)
    _applied.append(applied)
    if prev_precision is not None:
        torch.set_float32_matmul_precision("high" if cfg.tf32 else "highest")
    try:
        yield applied
    finally:
        _applied.pop()
        _ftz_stack.pop()
        set_flush_denormal_all_threads(prev_ftz, cfg.threads)
        torch.set_num_threads(prev_threads)
        if prev_precision is not None:
            torch.set_float32_matmul_precision(prev_precision)


def scheduling() -> str:
    """This process's CPU scheduling: ``SCHED_FIFO priority 20`` (as under ``chrt -f 20``) or ``SCHED_OTHER nice 0``.

    On a machine shared with other work, timings taken under the default policy include whatever
    the scheduler gives the other processes (and nice alone does not help where the kernel groups
    tasks by session, ``sched_autogroup``); a real-time policy keeps the CPUs for the measurement.
    """
    if not hasattr(os, "sched_getscheduler"):
        return "scheduling unknown"
    policy = os.sched_getscheduler(0)
    if policy in (os.SCHED_FIFO, os.SCHED_RR):
        name = "SCHED_FIFO" if policy == os.SCHED_FIFO else "SCHED_RR"
        return f"{name} priority {os.sched_getparam(0).sched_priority}"
    return f"SCHED_OTHER nice {os.getpriority(os.PRIO_PROCESS, 0)}"


def describe(cfg: RuntimeConfig, applied: Applied | None = None) -> str:
    """One line: torch version, device, threads, FTZ, TF32, allocator policy, malloc environment, CPU scheduling."""
    torch = load_torch()
    applied = applied or (_applied[-1] if _applied else None)
    if cfg.device == "cuda":
        gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
        where = f"cuda ({gpu}, CUDA {torch.version.cuda}), TF32 {'on' if cfg.tf32 else 'off'}, denormals at full speed on GPU"
    else:
        capability = torch.backends.cpu.get_cpu_capability()
        if not cfg.flush_denormal:
            ftz = "FTZ/DAZ off"
        elif applied is None:
            ftz = "FTZ/DAZ on (when applied)"
        elif not applied.ftz_supported:
            ftz = "FTZ/DAZ unsupported on this CPU"
        else:
            ftz = "FTZ/DAZ on (all threads)" if applied.ftz_all_threads else "FTZ/DAZ on (main thread only)"
        where = f"cpu ({platform.machine()} {capability}), {ftz}"
    env = [f"{k}={os.environ[k]}" for k in MALLOC_ENV if os.environ.get(k)]
    malloc = ", ".join(env) if env else "glibc malloc defaults"
    return (f"torch {torch.__version__}, {where}, {cfg.threads} threads, allocator: {ALLOCATOR_POLICY} ({malloc}), "
            f"{scheduling()}")

"""Hardware event counts per op (NLP-Perf's cachestat and custom modes, 003 §IV), or a simulated fallback.

Counters. ``count_events(fn, events, repeats)`` counts named events around calls of ``fn``
through Linux's ``perf_event_open``: one event group per thread of this process (so OpenMP
workers that exist when it starts are counted too), user-space only, enabled and disabled with
``ioctl`` around each call, read as a group with the time each group was enabled and running
(multiplexed counts are scaled up by enabled/running). ``EVENTS`` maps perf's generic names
(``cycles``, ``instructions``, ``LLC-load-misses``, ``dTLB-load-misses``, software events such
as ``task-clock``, and raw ``rNNNN`` codes) to ``perf_event_attr`` type and config.

``perf_support()`` says whether hardware counters work here and why not: it opens an
``instructions`` counter on this thread and reads it. Many VMs expose no PMU: there
``perf_event_open`` fails with ENOENT and ``perf stat`` prints ``<not supported>``. Software
events (task-clock, page-faults, context-switches) still count there; hardware and cache events
raise one ``TstackError`` line that says so.

The cachestat mode and its simulated fallback live in ``cachestat``.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import os
import platform
import re
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from tstack.errors import TstackError, UnknownNameError
from tstack.profiler.runtime import RuntimeConfig
from tstack.workload.op import Op

# --------------------------------------------------------------------------------------------------
# Event names -> perf_event_attr (type, config), as perf names them (linux/perf_event.h)
# --------------------------------------------------------------------------------------------------
TYPE_HARDWARE, TYPE_SOFTWARE, TYPE_HW_CACHE, TYPE_RAW = 0, 1, 3, 4

_HARDWARE = {
    "cycles": 0, "cpu-cycles": 0, "instructions": 1, "cache-references": 2, "cache-misses": 3,
    "branches": 4, "branch-instructions": 4, "branch-misses": 5, "bus-cycles": 6,
    "stalled-cycles-frontend": 7, "stalled-cycles-backend": 8, "ref-cycles": 9,
}
_SOFTWARE = {
    "cpu-clock": 0, "task-clock": 1, "page-faults": 2, "faults": 2, "context-switches": 3, "cs": 3,
    "cpu-migrations": 4, "migrations": 4, "minor-faults": 5, "major-faults": 6, "alignment-faults": 7,
    "emulation-faults": 8,
}
# Hardware cache events: config = cache | op << 8 | result << 16.
_CACHES = {"L1-dcache": 0, "L1-icache": 1, "LLC": 2, "dTLB": 3, "iTLB": 4, "branch": 5, "node": 6}
_CACHE_OPS = {"load": 0, "store": 1, "prefetch": 2}
_CACHE_NAMES = {"loads": ("load", 0), "load-misses": ("load", 1), "stores": ("store", 0), "store-misses": ("store", 1),
                "prefetches": ("prefetch", 0), "prefetch-misses": ("prefetch", 1)}
_CACHE_SUPPORTED = {"L1-icache": ("loads", "load-misses", "prefetches", "prefetch-misses"), "iTLB": ("loads", "load-misses"),
                    "branch": ("loads", "load-misses")}  # the others have all six, as in `perf list`
_HW_CACHE = {f"{c}-{suffix}": cid | _CACHE_OPS[op] << 8 | result << 16
             for c, cid in _CACHES.items() for suffix, (op, result) in _CACHE_NAMES.items()
             if suffix in _CACHE_SUPPORTED.get(c, tuple(_CACHE_NAMES))}


@dataclass(frozen=True)
class EventSpec:
    name: str
    type: int
    config: int

    @property
    def hardware(self) -> bool:
        """Whether the event needs a hardware PMU (everything but the kernel's software events)."""
        return self.type != TYPE_SOFTWARE


EVENTS: dict[str, EventSpec] = {
    **{n: EventSpec(n, TYPE_HARDWARE, c) for n, c in _HARDWARE.items()},
    **{n: EventSpec(n, TYPE_SOFTWARE, c) for n, c in _SOFTWARE.items()},
    **{n: EventSpec(n, TYPE_HW_CACHE, c) for n, c in _HW_CACHE.items()},
}
_RAW = re.compile(r"r([0-9a-fA-F]{1,16})")


def event(name: str) -> EventSpec:
    """The perf_event_attr type and config of a generic event name, or of a raw ``rNNNN`` code (hex)."""
    spec = EVENTS.get(name)
    if spec is not None:
        return spec
    m = _RAW.fullmatch(name)
    if m:
        return EventSpec(name, TYPE_RAW, int(m.group(1), 16))
    raise UnknownNameError(f"event {name!r} is not known (allowed: {', '.join(EVENTS)}, or a raw code rNNNN in hex)")


# --------------------------------------------------------------------------------------------------
# perf_event_open through ctypes
# --------------------------------------------------------------------------------------------------
_SYSCALL_NR = {"x86_64": 298, "aarch64": 241, "riscv64": 241, "ppc64le": 319, "ppc64": 319, "s390x": 331, "i686": 336,
               "armv7l": 364}
FORMAT_TOTAL_TIME_ENABLED, FORMAT_TOTAL_TIME_RUNNING, FORMAT_GROUP = 1 << 0, 1 << 1, 1 << 3
FLAG_DISABLED, FLAG_EXCLUDE_KERNEL, FLAG_EXCLUDE_HV = 1 << 0, 1 << 5, 1 << 6
PERF_FLAG_FD_CLOEXEC = 1 << 3
IOC_ENABLE, IOC_DISABLE, IOC_RESET = 0x2400, 0x2401, 0x2403  # _IO('$', 0/1/3)
IOC_FLAG_GROUP = 1


class _Attr(ctypes.Structure):
    """struct perf_event_attr (PERF_ATTR_SIZE_VER8, 136 bytes); the bit-fields are one u64 ``flags``."""

    _fields_ = [
        ("type", ctypes.c_uint32), ("size", ctypes.c_uint32), ("config", ctypes.c_uint64),
        ("sample_period", ctypes.c_uint64), ("sample_type", ctypes.c_uint64), ("read_format", ctypes.c_uint64),
        ("flags", ctypes.c_uint64), ("wakeup_events", ctypes.c_uint32), ("bp_type", ctypes.c_uint32),
        ("config1", ctypes.c_uint64), ("config2", ctypes.c_uint64), ("branch_sample_type", ctypes.c_uint64),
        ("sample_regs_user", ctypes.c_uint64), ("sample_stack_user", ctypes.c_uint32), ("clockid", ctypes.c_int32),
        ("sample_regs_intr", ctypes.c_uint64), ("aux_watermark", ctypes.c_uint32), ("sample_max_stack", ctypes.c_uint16),
        ("reserved_2", ctypes.c_uint16), ("aux_sample_size", ctypes.c_uint32), ("reserved_3", ctypes.c_uint32),
        ("sig_data", ctypes.c_uint64), ("config3", ctypes.c_uint64),
    ]


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def _perf_event_open(spec: EventSpec, tid: int, group_fd: int = -1, leader: bool = True) -> int:
    """Open one user-space counter of ``spec`` on thread ``tid`` (0: this thread); OSError on failure."""
    nr = _SYSCALL_NR.get(platform.machine())
    if nr is None:
        raise OSError(errno.ENOSYS, f"perf_event_open syscall number unknown on {platform.machine()}")
    attr = _Attr()
    attr.type, attr.size, attr.config = spec.type, ctypes.sizeof(_Attr), spec.config
    attr.read_format = FORMAT_GROUP | FORMAT_TOTAL_TIME_ENABLED | FORMAT_TOTAL_TIME_RUNNING
    attr.flags = FLAG_EXCLUDE_KERNEL | FLAG_EXCLUDE_HV | (FLAG_DISABLED if leader else 0)
    fd = _libc().syscall(ctypes.c_long(nr), ctypes.byref(attr), ctypes.c_int(tid), ctypes.c_int(-1),
                         ctypes.c_int(group_fd), ctypes.c_ulong(PERF_FLAG_FD_CLOEXEC))
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return int(fd)


class _Group:
    """One counter group (leader + members) on one thread."""

    def __init__(self, specs: Sequence[EventSpec], tid: int) -> None:
        self.fds: list[int] = []
        try:
            for i, s in enumerate(specs):
                self.fds.append(_perf_event_open(s, tid, self.fds[0] if i else -1, leader=i == 0))
        except OSError:
            self.close()
            raise

    def ioctl(self, request: int) -> None:
        fcntl.ioctl(self.fds[0], request, IOC_FLAG_GROUP)

    def read(self) -> tuple[list[int], int, int]:
        """Counts (in event order), time enabled and time running (ns)."""
        n = len(self.fds)
        data = os.read(self.fds[0], 8 * (3 + n))
        nr, enabled, running, *values = struct.unpack(f"{3 + n}Q", data)
        return values[:nr], enabled, running

    def close(self) -> None:
        for fd in reversed(self.fds):
            os.close(fd)
        self.fds = []


# --------------------------------------------------------------------------------------------------
# Support
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Support:
    available: bool
    reason: str


_ERRNO_WHY = {
    errno.ENOENT: "no PMU exposed, usual in VMs",
    errno.EOPNOTSUPP: "hardware counters not supported here",
    errno.ENODEV: "no such PMU on this CPU",
    errno.ENOSYS: "kernel without perf events",
    errno.EBUSY: "counters held by another user (NMI watchdog or a profiler)",
}


def _paranoid() -> int | None:
    try:
        with open("/proc/sys/kernel/perf_event_paranoid", encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _why(e: OSError) -> str:
    name = errno.errorcode.get(e.errno or 0, str(e.errno))
    if e.errno in (errno.EACCES, errno.EPERM):
        why = (f"not permitted at kernel.perf_event_paranoid={_paranoid()}: "
               "lower it (sysctl kernel.perf_event_paranoid=2) or grant CAP_PERFMON")
    else:
        why = _ERRNO_WHY.get(e.errno or 0, e.strerror or "")
    return f"{name}, {why}"


def _perf_stat_verdict() -> str | None:
    """What ``perf stat -e instructions`` says about the counter here (None without perf)."""
    perf = shutil.which("perf")
    if perf is None:
        return None
    try:
        r = subprocess.run([perf, "stat", "-x,", "-e", "instructions", "true"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    for line in r.stderr.splitlines():
        if "instructions" in line:
            value = line.split(",", 1)[0].strip()
            return f"perf stat: {value}" if value.startswith("<") else "perf stat counts"
    return None


@functools.lru_cache(maxsize=1)
def perf_support() -> Support:
    """Whether hardware counters can be opened and read by this process (cached for the process)."""
    if sys.platform != "linux":
        return Support(False, f"perf_event_open is Linux only (this is {sys.platform})")
    spec = EVENTS["instructions"]
    try:
        group = _Group([spec], 0)
    except OSError as e:
        verdict = _perf_stat_verdict()
        return Support(False, f"perf_event_open: {_why(e)}" + (f"; {verdict}" if verdict else ""))
    try:
        group.ioctl(IOC_RESET)
        group.ioctl(IOC_ENABLE)
        sum(range(10_000))
        group.ioctl(IOC_DISABLE)
        (count,), _, running = group.read()
    except OSError as e:
        return Support(False, f"perf_event_open(instructions) opens but cannot be read: {_why(e)}")
    finally:
        group.close()
    if count == 0 or running == 0:
        return Support(False, "perf_event_open(instructions) opens but counts nothing (PMU not passed through)")
    return Support(True, f"perf_event_open, kernel.perf_event_paranoid={_paranoid()}")


@functools.lru_cache(maxsize=1)
def simulator_support() -> Support:
    """Whether the simulated cachestat can run: Linux, x86-64 (client requests) and valgrind installed."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        return Support(False, f"the cache simulation needs Linux on x86-64 (this is {sys.platform} {platform.machine()})")
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        return Support(False, "valgrind is not installed (apt-get install valgrind)")
    try:
        version = subprocess.run([valgrind, "--version"], capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        return Support(False, f"valgrind does not run: {e}")
    return Support(True, version or "valgrind")


def describe_support() -> str:
    """One line for the CLI: are counters usable, and what cachestat and custom will do."""
    hw = perf_support()
    if hw.available:
        return f"hardware counters: available ({hw.reason}); cachestat counts LLC misses and instructions"
    sim = simulator_support()
    then = ("cachestat is simulated (callgrind, reduced shapes)" if sim.available
            else f"cachestat needs counters or valgrind ({sim.reason})")
    return f"hardware counters: unavailable ({hw.reason}); {then}; custom counts software events only"


class CountersUnavailable(TstackError):
    """Hardware events were asked for on a machine whose counters cannot be used."""


def _require_counters(specs: Iterable[EventSpec]) -> None:
    hardware = [s.name for s in specs if s.hardware]
    if not hardware:
        return
    hw = perf_support()
    if not hw.available:
        raise CountersUnavailable(
            f"hardware counters are unavailable here ({hw.reason}), so {', '.join(hardware)} cannot be counted; "
            "cachestat has a simulated fallback (valgrind) and software events such as task-clock still count")


# --------------------------------------------------------------------------------------------------
# Counting
# --------------------------------------------------------------------------------------------------
def _threads() -> list[int]:
    try:
        return sorted(int(t) for t in os.listdir("/proc/self/task"))
    except OSError:
        return [0]


def count_events(fn: Callable[[], object], events: Sequence[str], repeats: int = 1,
                 between: Callable[[], object] | None = None) -> dict[str, float]:
    """Mean count of each event per call of ``fn`` over ``repeats`` calls (user space, every thread).

    ``between`` (optional) runs before each call with the counters off, e.g. to evict the caches.
    Threads that ``fn`` itself creates are not counted: warm a thread pool up before counting.
    Raises TstackError when an event is unknown, hardware counters are needed but unavailable, the
    events cannot be opened together, or the PMU never scheduled the group.
    """
    if not events:
        raise TstackError("count_events: no events named")
    if repeats < 1:
        raise TstackError(f"count_events: repeats={repeats} must be ≥ 1")
    specs = [event(e) for e in events]
    _require_counters(specs)
    groups: list[_Group] = []
    try:
        for tid in _threads():
            try:
                groups.append(_Group(specs, tid))
            except OSError as e:
                if e.errno == errno.ESRCH:  # the thread ended meanwhile
                    continue
                raise TstackError(f"perf_event_open({', '.join(events)}) on thread {tid}: {_why(e)}") from None
        totals = [0.0] * len(specs)
        for _ in range(repeats):
            if between is not None:
                between()
            for g in groups:
                g.ioctl(IOC_RESET)
            for g in groups:
                g.ioctl(IOC_ENABLE)
            fn()
            for g in groups:
                g.ioctl(IOC_DISABLE)
            for g in groups:
                values, enabled, running = g.read()
                if running == 0:
                    if enabled == 0:
                        continue  # the thread never ran while enabled
                    raise TstackError(f"the PMU could not schedule {', '.join(events)} together: name fewer events")
                for i, v in enumerate(values):
                    totals[i] += v * enabled / running
    finally:
        for g in groups:
            g.close()
    return {name: t / repeats for name, t in zip(events, totals)}


def count_op_events(op: Op, cfg: RuntimeConfig, events: Sequence[str], repeats: int = 10, warmup: int = 3,
                    seed: int = 0) -> dict[str, float]:
    """Custom mode: mean counts of ``events`` per run of one op (prepared once, warmed up, then counted)."""
    from tstack.profiler.opexec import prepare
    from tstack.profiler.runtime import controlled

    specs = [event(e) for e in events]
    _require_counters(specs)  # before preparing anything
    with controlled(cfg):
        p = prepare(op, cfg, seed)
        for _ in range(warmup):
            p.run()
        return count_events(p.run, events, repeats)


# --------------------------------------------------------------------------------------------------
# Cache geometry
# --------------------------------------------------------------------------------------------------

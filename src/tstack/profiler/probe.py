"""How fast and how busy the host is, before and after a measurement (``tstack profile``, ``calibrate``, ``validate``).

A probe reads the 1-minute load average and times a fixed reference kernel: a 512×512×512 fp32 GEMM (a point of
the calibration grid), median of ``repeats`` samples, on the run's threads. ``calibrate`` stores its probes in the
device file (``Calibration.provenance``); ``validate`` compares its own probes with them, so that a host running
slower than when it was calibrated (a shared VM's host changes speed over minutes) or busy with other work is
said in one warning line and recorded in the JSON, instead of showing up as an unexplained prediction error.

Rules (``check``): the host is *slow* when the slower of the probes takes more than ``SLOW`` (1.25) times the
calibration's reference seconds; it is *busy* when other work's load exceeds the cores the run uses: the load
average before the run, or after it less the run's own threads (the run itself adds about that much), is above
``threads``.
"""

from __future__ import annotations

import datetime
import os
import platform
import socket
from typing import Any

from tstack.profiler.runtime import RuntimeConfig, controlled
from tstack.profiler.timing import time_callable
from tstack.workload import formulas as F
from tstack.workload.op import Op, OpKind

REFERENCE = (512, 512, 512)
REFERENCE_NAME = "gemm 512x512x512 fp32"
SLOW = 1.25


def reference_op() -> Op:
    M, N, K = REFERENCE
    c = F.gemm(M, N, K, 1, 4, 4)
    return Op(kind=OpKind.GEMM, name="gemm", dims=c.dims, dtype="fp32", flops=c.flops, bytes=c.bytes, labels=(("part", "probe"),))


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host() -> dict[str, Any]:
    """Host name, CPU model, cores and the time (UTC, ISO 8601)."""
    return {"host": socket.gethostname(), "cpu_model": cpu_model(), "cores": os.cpu_count() or 1,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def probe(cfg: RuntimeConfig, repeats: int = 9) -> dict[str, Any]:
    """Load average and the reference kernel's median seconds on ``cfg`` (about 20 ms of work)."""
    from tstack.profiler.opexec import prepare

    load = load_average()
    op = reference_op()
    with controlled(cfg):
        p = prepare(op, cfg)
        t = time_callable(p.run, cfg, warmup=3, repeats=repeats)
        del p
    return {"load_1min": load, "reference_kernel": REFERENCE_NAME, "reference_seconds": t.median,
            "reference_flop_per_second": op.flops / t.median, "threads": cfg.threads,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def check(before: dict[str, Any], after: dict[str, Any] | None, threads: int,
          calibrated: dict[str, Any] | None = None) -> str | None:
    """One warning line when the host is slower than at calibration or busy (see the module docstring), else None."""
    reasons = []
    ref = (calibrated or {}).get("reference_seconds")
    probes = [p for p in (before, after) if p]
    if isinstance(ref, (int, float)) and ref > 0:
        slowest = max(p["reference_seconds"] for p in probes)
        if slowest > SLOW * ref:
            reasons.append(f"the reference kernel ({REFERENCE_NAME}) ran {slowest / ref:.2f}× slower than at "
                           f"calibration ({1e3 * slowest:.2f} ms against {1e3 * ref:.2f} ms)")
    loads = [before.get("load_1min")] + ([after["load_1min"] - threads] if after and after.get("load_1min") else [])
    other = max((x for x in loads if x is not None), default=None)
    if other is not None and other > threads:
        reasons.append(f"other work loads the host: 1-minute load average {other:.1f} beside this run, above the "
                       f"{threads} cores it uses")
    if not reasons:
        return None
    return "warning: measurements may be slow: " + "; ".join(reasons)


def calibration_reference(provenance: dict[str, Any] | None) -> dict[str, Any] | None:
    """The faster of a calibration's probes (its own speed), or None for files that recorded none."""
    probes = [p for p in ((provenance or {}).get("probe_before"), (provenance or {}).get("probe_after"))
              if isinstance(p, dict) and isinstance(p.get("reference_seconds"), (int, float))]
    return min(probes, key=lambda p: p["reference_seconds"]) if probes else None

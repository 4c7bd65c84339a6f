"""Chrome / Perfetto trace JSON (open in ui.perfetto.dev or chrome://tracing) of a Breakdown and of measured kernels.

Process 1 lays the Breakdown's ops end to end in op order, one track (thread) per ``part``, each op an ``"X"``
event whose ``dur`` is its seconds in µs and whose args carry every label, its dims, FLOPs and bytes. The
iteration is marked the way torch.profiler marks one (a ``ProfilerStep#0`` user annotation over all of it), and the
trace names its rank (``distributedInfo``) as PyTorch's do, so Holistic Trace Analysis can load it. For a
measured profile, process 2 holds the raw kernels of one profiled step at their measured start times, one track
per CPU thread, with the module they ran in and the labels they were attributed to.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from tstack.breakdown import Breakdown
from tstack.workload.op import LABEL_KEYS

if TYPE_CHECKING:
    from tstack.profiler.scopes import KernelEvent, ModuleProfile

US = 1e6  # trace timestamps and durations are in microseconds
OPS_PID, KERNELS_PID = 1, 2
STEP_TID = 0  # the track of the ProfilerStep#0 annotation


def _us(seconds: float) -> float:
    return round(seconds * US, 3)  # nanosecond resolution


def _meta(name: str, pid: int, tid: int | None, value: str, sort: int | None = None) -> list[dict[str, Any]]:
    base = {"ph": "M", "pid": pid, **({"tid": tid} if tid is not None else {})}
    out = [{**base, "name": name, "args": {"name": value}}]
    if sort is not None:
        out.append({**base, "name": name.replace("_name", "_sort_index"), "args": {"sort_index": sort}})
    return out


def breakdown_trace(b: Breakdown, kernels: Sequence[KernelEvent] = (), meta: Mapping[str, Any] | None = None) -> dict:
    """Trace dict of the ops end to end (one track per part), plus raw measured kernels when given."""
    events = _meta("process_name", OPS_PID, None, f"tstack {b.model.name} on {b.device}: ops end to end", 0)
    tracks: dict[str, int] = {}
    t = 0.0
    for op, cost in zip(b.ops, b.costs):
        tid = tracks.setdefault(op.label("part"), len(tracks) + 1)
        args = {**{k: op.label(k) for k in LABEL_KEYS}, "kind": op.kind, "dtype": op.dtype, "dims": dict(op.dims),
                "count": op.count, "flops": op.flops * op.count, "bytes": op.bytes * op.count, "seconds": cost.seconds}
        events.append({"name": op.name, "cat": op.kind, "ph": "X", "pid": OPS_PID, "tid": tid, "ts": _us(t),
                       "dur": _us(cost.seconds), "args": args})
        t += cost.seconds
    for part, tid in tracks.items():
        events += _meta("thread_name", OPS_PID, tid, part, tid)
    events.append({"name": "ProfilerStep#0", "cat": "user_annotation", "ph": "X", "pid": OPS_PID, "tid": STEP_TID,
                   "ts": 0.0, "dur": _us(t), "args": {}})
    events += _meta("thread_name", OPS_PID, STEP_TID, "iteration", 0)
    if kernels:
        events += _meta("process_name", KERNELS_PID, None, "measured kernels (one profiled step)", 1)
        threads: dict[int, int] = {}
        for k in kernels:
            tid = threads.setdefault(k.thread, len(threads) + 1)
            args = {**dict(k.labels), "op": k.op, "module": k.module, "shapes": [list(s) for s in k.shapes],
                    "seconds": k.seconds}
            events.append({"name": k.aten, "cat": dict(k.labels).get("pass", "-"), "ph": "X", "pid": KERNELS_PID,
                           "tid": tid, "ts": _us(k.start_s), "dur": _us(k.seconds), "args": args})
        for thread, tid in threads.items():
            events += _meta("thread_name", KERNELS_PID, tid, f"thread {thread}", tid)
    return {"traceEvents": events, "displayTimeUnit": "ms", "distributedInfo": {"rank": 0, "world_size": 1},
            "otherData": {**b.summary(), **(meta or {})}}


def profile_trace(p: ModuleProfile) -> dict:
    """Trace of a measured profile: its ops end to end, its raw kernels, and its wall/attributed times."""
    meta = {"wall_s": p.wall_s, "profiled_s": p.profiled_s, "attributed_s": p.attributed_s,
            "unattributed_s": p.unattributed_s, "notes": list(p.notes)}
    return breakdown_trace(p.breakdown, p.kernels, meta)


def merge_traces(traces: Sequence[Mapping[str, Any]]) -> dict:
    """Several traces in one file, each configuration in its own processes (pids offset by 10 per trace)."""
    if len(traces) == 1:
        return dict(traces[0])
    events = [{**e, "pid": e["pid"] + 10 * i} for i, t in enumerate(traces) for e in t["traceEvents"]]
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": {"configurations": [t["otherData"] for t in traces]}}

"""Cartesian sweeps over model and run parameters, returning a tidy table (one row per config × group)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from tstack.costmodel import Target, cost_workload, load_target
from tstack.costmodel.cost import Cost
from tstack.errors import TstackError, UnknownNameError
from tstack.models import load_model
from tstack.parallel import pmap
from tstack.spec import ModelSpec, RunSpec
from tstack.workload.build import build, check_pair

# Sweep axis -> (spec, field). Paper symbols are accepted beside the field names.
AXES = {
    "batch": ("run", "batch"), "B": ("run", "batch"),
    "seq": ("run", "seq"), "n": ("run", "seq"), "S": ("run", "seq"),
    "precision": ("run", "precision"),
    "layers": ("model", "layers"), "N": ("model", "layers"),
    "hidden": ("model", "hidden"), "d_model": ("model", "hidden"), "H": ("model", "hidden"),
    "ffn": ("model", "ffn"), "d_ff": ("model", "ffn"), "F": ("model", "ffn"),
    "heads": ("model", "heads"), "h": ("model", "heads"),
}
COLUMNS = ("model", "device", "mode", "batch", "seq", "layers", "hidden", "ffn", "heads", "precision")


@dataclass(frozen=True)
class Config:
    """One point of a sweep: the two specs it resolves to."""

    model: ModelSpec
    run: RunSpec


def configs(model: ModelSpec, run: RunSpec, axes: dict[str, Sequence[Any]]) -> list[Config]:
    """Every combination of the axis values applied to the base specs (validated per point)."""
    for key in axes:
        if key not in AXES:
            raise UnknownNameError(f"sweep axis {key!r} is unknown (allowed: {', '.join(AXES)})")
    names = list(axes)
    out = []
    for values in itertools.product(*(axes[k] for k in names)):
        m_changes: dict[str, Any] = {}
        r_changes: dict[str, Any] = {}
        for k, v in zip(names, values):
            spec, fld = AXES[k]
            (m_changes if spec == "model" else r_changes)[fld] = v
        m = model.replace(**m_changes) if m_changes else model
        if m_changes and "hidden" in m_changes and "ffn" not in m_changes and model.ffn == 4 * model.hidden:
            m = m.replace(ffn=4 * m.hidden)  # keep d_ff = 4·d_model when the base model follows it
        out.append(Config(m, run.replace(**r_changes) if r_changes else run))
    return out


def evaluate(cfg: Config, device: Target, cost_model: Callable | None = None) -> list[dict[str, Any]]:
    """Rows of one configuration: seconds, FLOPs, bytes and kernels per 002 group, on any hardware target."""
    m, r = cfg.model, cfg.run
    groups: dict[str, Cost] = {}
    for op, c in zip(*cost_workload(build(m, r, collapse=True, device=device.name), device, cost_model)):
        g = op.label("group")
        groups[g] = groups[g] + c if g in groups else c
    total = sum(groups.values(), Cost()).seconds
    base = {"model": m.name, "device": device.name, "mode": r.mode, "batch": r.batch, "seq": r.seq,
            "layers": m.layers, "hidden": m.hidden, "ffn": m.ffn, "heads": m.heads, "precision": r.precision}
    return [{**base, "group": g, "seconds": c.seconds, "share": c.seconds / total, "flops": c.flops,
             "bytes": c.bytes, "kernels": c.kernels, "joules": c.joules} for g, c in groups.items()]


def sweep(model: str | Path | ModelSpec, axes: dict[str, Sequence[Any]], device: str | Path | Target = "a100",
          run: RunSpec | None = None, executor: str = "process", workers: int | None = None,
          progress: Callable[[int], None] | None = None):  # returns a pandas DataFrame
    """Tidy DataFrame: one row per (configuration, 002 group), over the Cartesian product of ``axes``."""
    import pandas as pd

    spec = load_model(model)
    dev = load_target(device)
    base = run or RunSpec(seq=spec.default_seq)
    points = configs(spec, base, axes)
    if not points:
        raise TstackError("the sweep has no configurations: every axis needs at least one value")
    for p in points:  # every pair is checked before any work starts
        check_pair(p.model, p.run)
    rows = pmap(partial(evaluate, device=dev), points, executor=executor, workers=workers, progress=progress)
    return pd.DataFrame.from_records([row for rs in rows for row in rs])

"""Matplotlib figures written to files: stacked breakdown bars and a roofline plot."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from tstack.breakdown import Breakdown
from tstack.errors import SpecError
from tstack.hardware.device import DeviceSpec


def stacked_bars(table, path: str | Path, config_cols: list[str], title: str = "", fmt: str | None = None) -> None:
    """One bar per configuration, stacked by 002 group share (like 002 Fig. 3/8/9 and 003 Fig. 4)."""
    df = table.copy()
    df["config"] = df[config_cols].astype(str).agg(" ".join, axis=1) if config_cols else df["model"]
    wide = df.pivot_table(index="config", columns="group", values="share", aggfunc="sum", sort=False).fillna(0.0)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(wide) + 3), 4.5))
    bottom = None
    cmap = plt.get_cmap("tab20")
    for i, col in enumerate(wide.columns):
        ax.bar(wide.index, 100 * wide[col], bottom=bottom, label=col, color=cmap(i % 20))
        bottom = 100 * wide[col] if bottom is None else bottom + 100 * wide[col]
    ax.set_ylabel("share of iteration time (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=60)
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    _save(fig, path, fmt)


def roofline_plot(b: Breakdown, dev: DeviceSpec, path: str | Path, dtype: str = "fp32", fmt: str | None = None) -> None:
    """Ops as points (arithmetic intensity vs attained FLOP/s) under the device's roofs."""
    fig, ax = plt.subplots(figsize=(7, 5))
    groups: dict[str, tuple[list[float], list[float]]] = {}
    for op, c in zip(b.ops, b.costs):
        if op.flops and c.seconds:
            xs, ys = groups.setdefault(op.label("group"), ([], []))
            xs.append(op.intensity)
            ys.append(op.flops * op.count / c.seconds)
    for name, (xs, ys) in groups.items():
        ax.scatter(xs, ys, s=12, label=name, alpha=0.7)
    lo, hi = 1e-2, 1e4
    for unit, style in (("matrix", "-"), ("vector", "--")):
        try:
            peak = dev.peak(unit, dtype)
        except SpecError:  # a device without this dtype has no roof for it
            continue
        knee = peak / dev.memory_bandwidth
        ax.plot([lo, knee, hi], [lo * dev.memory_bandwidth, peak, peak], style, color="k", lw=1,
                label=f"{unit} {dtype} roof")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP/byte)")
    ax.set_ylabel("attained FLOP/s")
    ax.set_title(f"{b.model.name} {b.run.mode} on {dev.name}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path, fmt)


def _save(fig, path: str | Path, fmt: str | None = None) -> None:
    """Write to ``path`` (already a temporary file when the caller writes several outputs at once)."""
    try:
        fig.savefig(path, dpi=120, format=fmt or Path(path).suffix.lstrip(".").lower())
    finally:
        plt.close(fig)


def validation_plot(records: list[dict], path: str | Path, title: str, fmt: str | None = None) -> None:
    """Predicted vs measured seconds per op (log-log), with the y = x line and a ±10% band."""
    fig, ax = plt.subplots(figsize=(6, 6))
    groups: dict[str, tuple[list[float], list[float]]] = {}
    for r in records:
        xs, ys = groups.setdefault(r["group"], ([], []))
        xs.append(r["measured_s"])
        ys.append(r["predicted_s"])
    for name, (xs, ys) in groups.items():
        ax.scatter(xs, ys, s=14, alpha=0.7, label=name)
    lo = min(min(r["measured_s"], r["predicted_s"]) for r in records) / 2
    hi = max(max(r["measured_s"], r["predicted_s"]) for r in records) * 2
    ax.plot([lo, hi], [lo, hi], "k-", lw=1, label="predicted = measured")
    for f in (0.9, 1.1):
        ax.plot([lo, hi], [lo * f, hi * f], "k:", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("measured seconds per op")
    ax.set_ylabel("predicted seconds per op")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path, fmt)


def int_errors_figure(errors: list, path: str) -> None:  # errors: integer.errors_sweep.OpError
    """One panel per op: signed error against input (elementwise ops) or element index (row ops)."""
    fig, axes = plt.subplots(1, len(errors), figsize=(4.2 * len(errors), 3.4), squeeze=False)
    for ax, e in zip(axes[0], errors, strict=True):
        ax.plot(e.x.numpy(), e.err.numpy(), lw=0.6) if e.op in ("gelu", "exp") else ax.plot(e.err.numpy(), ".", ms=1)
        ax.set_title(f"i-{e.op}: max {e.max_abs:.2e}, RMS {e.rms:.2e}", fontsize=9)
        ax.set_xlabel("x" if e.op in ("gelu", "exp") else "element")
        ax.set_ylabel("integer - float")
        ax.text(0.02, 0.02, e.domain, transform=ax.transAxes, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

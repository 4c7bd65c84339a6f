"""Figures of the accelerator model, written to files; matplotlib is imported only when one is drawn."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tstack.accel.energy import COMPONENTS
from tstack.accel.model import CATEGORIES, Result
from tstack.search.dse import Outcome


def _plt() -> Any:  # matplotlib's pyplot module
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path, fmt: str | None) -> None:  # fig: a matplotlib Figure
    fig.tight_layout()
    fig.savefig(path, format=fmt or Path(path).suffix.lstrip(".").lower())


def breakdown(runs: Sequence[tuple[str, Result]], path: str | Path, title: str = "", fmt: str | None = None) -> None:
    """One bar per run, stacked by category share of its time (like 000 Fig. 2)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(runs) + 2.5), 4.5))
    bottoms = [0.0] * len(runs)
    names = [name for name, _ in runs]
    by_category = [(r.by_category(), r.seconds) for _, r in runs]  # once per run, not once per category
    for i, cat in enumerate(CATEGORIES):
        shares = [100 * cats[cat] / seconds for cats, seconds in by_category]
        ax.bar(names, shares, bottom=bottoms, label=cat, color=plt.get_cmap("tab10")(i))
        bottoms = [b + s for b, s in zip(bottoms, shares)]
    ax.set_ylabel("share of inference time (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend(fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    _save(fig, path, fmt)
    plt.close(fig)


def pareto(outcomes: Sequence[Outcome], front: Sequence[bool], path: str | Path, title: str = "",
           fmt: str | None = None) -> None:
    """Latency against energy of the feasible design points, the Pareto set highlighted."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 5))
    for o, on_front in zip(outcomes, front):
        if o.feasible:
            ax.scatter(o.latency_s * 1e3, o.joules * 1e3, c="tab:red" if on_front else "tab:gray", s=30)
            ax.annotate(o.point.label, (o.latency_s * 1e3, o.joules * 1e3), fontsize=6)
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("energy (mJ)")
    ax.set_title(title)
    _save(fig, path, fmt)
    plt.close(fig)


def gemm_mappings(records: Sequence[Mapping[str, Any]], path: str | Path, title: str = "", fmt: str | None = None) -> None:
    """Latency and energy by component of each mapping (records of `tstack accel gemm`)."""
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(7.0, 1.6 * len(records) + 4), 4.5))
    names = [f"{r['hardware']}\n{r['mapping']}" for r in records]
    left.bar(names, [r["seconds"] * 1e6 for r in records], color="tab:blue")
    left.set_ylabel("latency (µs)")
    bottoms = [0.0] * len(records)
    for i, c in enumerate(COMPONENTS):
        values = [r[f"{c}_joules"] * 1e6 for r in records]
        if any(values):
            right.bar(names, values, bottom=bottoms, label=c, color=plt.get_cmap("tab10")(i))
            bottoms = [b + v for b, v in zip(bottoms, values)]
    right.set_ylabel("energy (µJ)")
    right.legend(fontsize=8)
    fig.suptitle(title)
    _save(fig, path, fmt)
    plt.close(fig)

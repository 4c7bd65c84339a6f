"""Figures of the accelerator model, written to files; matplotlib is imported only when one is drawn."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tstack.accel.dse import Outcome
from tstack.accel.model import CATEGORIES, Result


def _plt():  # noqa: ANN202 - matplotlib's pyplot module
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def breakdown(runs: Sequence[tuple[str, Result]], path: str | Path, title: str = "") -> None:
    """One bar per run, stacked by category share of its time (like 000 Fig. 2)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(runs) + 2.5), 4.5))
    bottoms = [0.0] * len(runs)
    names = [name for name, _ in runs]
    for i, cat in enumerate(CATEGORIES):
        shares = [100 * r.by_category()[cat] / r.seconds for _, r in runs]
        ax.bar(names, shares, bottom=bottoms, label=cat, color=plt.get_cmap("tab10")(i))
        bottoms = [b + s for b, s in zip(bottoms, shares)]
    ax.set_ylabel("share of inference time (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend(fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    fig.savefig(path, format=Path(path).suffix.lstrip(".").lower())
    plt.close(fig)


def pareto(outcomes: Sequence[Outcome], front: Sequence[bool], path: str | Path, title: str = "") -> None:
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
    fig.tight_layout()
    fig.savefig(path, format=Path(path).suffix.lstrip(".").lower())
    plt.close(fig)

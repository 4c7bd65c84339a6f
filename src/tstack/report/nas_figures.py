"""000 Fig. 4 from a `tstack nas search` document: EDP, latency and energy against perplexity.

Every evaluated subnet is a dot, each algorithm's Pareto front (in that metric and perplexity) a line, the
baseline (the supernet's largest subnet) a cross, and dashed lines mark the baseline's perplexity + 0.1 and + 1.
Matplotlib is imported only when a figure is drawn. The table of reductions is printed by ``print_reductions``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tstack.report import units
from tstack.search.cluster import pareto
from tstack.search.nas import PERPLEXITY_DELTAS

PANELS = (("joule_seconds", "EDP (J·s)"), ("latency_seconds", "latency (s)"), ("joules", "energy (J)"))


def fig4(doc: Mapping[str, Any], path: str | Path, fmt: str | None = None) -> None:
    """Three panels (those whose metric the hardware models) like 000 Fig. 4, one colour per algorithm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = doc["records"]
    base = doc["baseline"]
    panels = [(f, label) for f, label in PANELS if base.get(f) is not None]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.2), squeeze=False)
    algorithms = list(dict.fromkeys(r["algorithm"] for r in records))
    cmap = plt.get_cmap("tab10")
    for ax, (field, label) in zip(axes[0], panels):
        for i, alg in enumerate(algorithms):
            pts = [(r["perplexity"], r[field]) for r in records if r["algorithm"] == alg and r[field] is not None]
            if not pts:
                continue
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=6, alpha=0.25, color=cmap(i))
            cost, ppl = np.array(sorted((y, x) for x, y in pts)).T  # lowest cost first: the cost-perplexity trade-off
            front = pareto(cost, ppl)
            ax.step(ppl[front], cost[front], where="post", color=cmap(i), label=f"{alg} front")
        ax.scatter([base["perplexity"]], [base[field]], marker="x", s=70, color="black", label="baseline", zorder=5)
        for delta, style in zip(PERPLEXITY_DELTAS, (":", "--")):
            ax.axvline(base["perplexity"] + delta, color="grey", linestyle=style, linewidth=1,
                       label=f"baseline +{delta:g} perplexity")
        ax.set_xlabel("perplexity (per byte)")
        ax.set_ylabel(label)
        ax.set_yscale("log")
        ax.set_title(f"{label.split(' (')[0]} vs perplexity")
    axes[0][0].legend(fontsize=7)
    run = doc["run"]
    fig.suptitle(f"{run['space']['name']} on {run['hw']}: cost of one inference (seq {run['space']['seq']}) vs "
                 "validation perplexity", fontsize=9)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120, format=fmt or Path(path).suffix.lstrip(".").lower())
    finally:
        plt.close(fig)


def reduction_rows(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The reductions section as table rows: algorithm, metric, +delta, tstack's and the paper's reduction."""
    return [{**r, "tstack": units.ratio(r["reduction"]), "paper": units.ratio(r["paper_reduction"])}
            for r in doc["reductions"]]


def print_reductions(console: Any, doc: Mapping[str, Any]) -> None:
    """The table of reductions at +0.1 and +1 perplexity next to 000 §IV-2's, with the note on scale."""
    from rich.table import Table

    t = Table(title="reduction against the baseline (largest subnet) at a perplexity budget; paper: 000 §IV-2")
    for c in ("algorithm", "metric", "perplexity budget", "tstack", "paper", "subnet"):
        t.add_column(c)
    for r in reduction_rows(doc):
        t.add_row(r["algorithm"], r["metric"], f"+{r['perplexity_delta']:g}", r["tstack"], r["paper"], r["subnet"] or "-")
    console.print(t)
    console.print("Scale: the paper's perplexity is over WikiText-2 tokens of a BERT-Base-width 6-layer model; "
                  "tstack's is per byte, of a much smaller model trained for minutes on a CPU, so +0.1 and +1 are "
                  "budgets of a different size here (docs/nas.md).")

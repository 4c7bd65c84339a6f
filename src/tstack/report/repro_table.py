"""Rich table of reproduced paper claims (tstack.studies.repro_002 rows): paper value, tstack value, gap, note."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from tstack.studies.repro_002 import INCREASE, RATIO, SHARE, Row


def format_value(row: Row) -> str:
    """The tstack value as the paper states its own: percent for shares, +percent for increases."""
    v = row.tstack
    if isinstance(v, str):
        return v
    if row.unit == SHARE:
        return f"{100 * v:.1f}%"
    if row.unit == INCREASE:
        return f"{100 * v:+.1f}%"
    if row.unit == RATIO:
        return f"{v:.3g}×"
    return f"{v:.3g}"


def format_gap(row: Row) -> str:
    """Distance to the paper's value or range: percentage points, or percent of the paper's factor for a ratio
    ('in range' inside it, '' without a number)."""
    g = row.gap
    if g is None:
        return ""
    if g == 0:
        return "in range"
    return f"{100 * g:+.1f}%" if row.unit == RATIO else f"{100 * g:+.1f} pp"


def repro_table(rows: Sequence[Row], title: str = "Demystifying BERT (002) reproduced", notes: bool = True) -> Table:
    """One line per claim: claim, paper, tstack, gap (and the note when ``notes``)."""
    t = Table(title=title, title_justify="left", show_edge=False)
    t.add_column("claim", overflow="fold")
    t.add_column("paper", overflow="fold")
    t.add_column("tstack", justify="right", no_wrap=True)
    t.add_column("gap", justify="right", no_wrap=True)
    if notes:
        t.add_column("note", overflow="fold")
    for r in rows:
        cells = [r.claim, r.paper, format_value(r), format_gap(r)]
        t.add_row(*(cells + [r.note] if notes else cells))
    return t


def print_repro_table(rows: Sequence[Row], console: Console | None = None, title: str = "Demystifying BERT (002) reproduced",
                      notes: bool = True) -> None:
    (console or Console()).print(repro_table(rows, title, notes))


def summary_line(rows: Sequence[Row]) -> str:
    """How many numeric claims fall inside the paper's value or range, and within 5 points of it (5% of it for a
    factor)."""
    scored = [r for r in rows if r.gap is not None]
    inside = sum(1 for r in scored if r.gap == 0)
    within5 = sum(1 for r in scored if abs(r.gap) <= 0.05)
    return (f"{inside}/{len(scored)} numeric claims inside the paper's value or range; "
            f"{within5}/{len(scored)} within 5 percentage points (5% for factors).")

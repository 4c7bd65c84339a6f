"""Rich tables of a Breakdown: the 002 hierarchy or any group-by."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from tstack.breakdown import Breakdown
from tstack.costmodel.cost import Cost
from tstack.report import units
from tstack.workload.build import OPTIMIZER_GROUP


def _group_table(title: str, groups: dict[str, Cost], total_s: float, names: dict[str, str]) -> Table:
    t = Table(title=title, title_justify="left", show_edge=False)
    for col, justify in (("", "left"), ("time", "right"), ("share", "right"), ("FLOP", "right"),
                         ("bytes", "right"), ("FLOP/B", "right"), ("util", "right"), ("bound", "left"), ("kernels", "right")):
        t.add_column(col, justify=justify)
    for name, c in sorted(groups.items(), key=lambda kv: -kv[1].seconds):
        t.add_row(names.get(name, name), units.seconds(c.seconds), units.percent(c.seconds / total_s), units.si(c.flops, ""),
                  units.si(c.bytes, "B"), f"{c.intensity:.1f}",
                  units.percent(c.utilization) if c.ideal_s > 0 else "-", c.bound, str(c.kernels))
    return t


def print_breakdown(b: Breakdown, group_by: str | None, console: Console) -> None:
    """Header line, then the 002 hierarchy (or one group-by table); shares are of the whole iteration."""
    t = b.total
    r = b.run
    shape = f"decode kv={r.kv_len}" if r.phase == "decode" else f"S={r.seq}"
    console.print(f"{b.model.name} {r.mode} B={r.batch} {shape} {r.precision} on {b.device}: "
                  f"{units.seconds(t.seconds)} per iteration, {units.si(t.flops, 'FLOP')}, {units.si(t.bytes, 'B')}, "
                  f"{t.kernels} kernels" + (f", {units.percent(t.utilization)} of peak" if t.ideal_s else " (measured)"))
    levels = [(f"by {group_by}", b.group_by(group_by))] if group_by is not None else b.hierarchy()
    names = {"optimizer": f"optimizer ({OPTIMIZER_GROUP[r.optimizer]})"}  # 002 Fig. 3 calls it LAMB
    for title, groups in levels:
        console.print(_group_table(title, groups, t.seconds, names))

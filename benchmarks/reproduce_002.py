"""Reproduce the runtime proportions of Demystifying BERT (002) with tstack and print them beside the paper's.

    python benchmarks/reproduce_002.py [device]      # device preset, default mi100 (002's GPU)
"""

from __future__ import annotations

import sys

from rich.console import Console

from tstack.report.repro_table import print_repro_table, summary_line
from tstack.studies.repro_002 import reproduce_002


def main() -> None:
    device = sys.argv[1] if len(sys.argv) > 1 else "mi100"
    rows = reproduce_002(device)
    console = Console(width=max(Console().width, 200))
    print_repro_table(rows, console, title=f"Demystifying BERT (002) vs tstack on {device} (BERT-Large training unless noted)")
    console.print(summary_line(rows))


if __name__ == "__main__":
    main()

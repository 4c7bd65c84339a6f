"""Holistic Trace Analysis loads a trace tstack wrote (`tstack analyze ... --trace` / profiler.trace.breakdown_trace).

    PYTHONPATH=src python benchmarks/hta_load.py

HTA (the ``holistictraceanalysis`` package) pulls jupyterlab, so it is not in the test extra; this script is the
check. It writes the predicted trace of one BERT-base training iteration on the a100 preset, loads it with
``hta.trace_analysis.TraceAnalysis`` and prints what HTA parsed: ranks, events, the iteration (ProfilerStep) it
found and the summed op time per tstack kind.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import tstack
from tstack.profiler.trace import breakdown_trace
from tstack.report.files import write_trace


def main() -> None:
    from hta.trace_analysis import TraceAnalysis

    b = tstack.analyze("bert-base", tstack.RunSpec(mode="train", batch=8, seq=128), "a100")
    with tempfile.TemporaryDirectory() as d:
        write_trace(breakdown_trace(b), Path(d) / "rank-0.json")
        t0 = time.perf_counter()
        ta = TraceAnalysis(trace_dir=d)
        load_s = time.perf_counter() - t0
        df = ta.t.get_trace(0)
        names = ta.t.symbol_table.get_sym_table()
        steps = [names[i] for i in df["name"].unique() if str(names[i]).startswith("ProfilerStep")]
        print(f"HTA loaded {len(ta.t.traces)} rank(s), {len(df)} events in {load_s:.2f} s; iterations: {steps}")
        ops = df[df["dur"] > 0]
        print(f"ops: {len(b.ops)} in tstack, {len(ops)} timed events in HTA's frame (with the ProfilerStep)")
        by_cat = ops.assign(cat_name=[names[i] for i in ops["cat"]]).groupby("cat_name")["dur"].sum()
        print("summed duration per category (µs):")
        print(by_cat.round(1).to_string())
        print(f"tstack total {b.total.seconds * 1e6:.1f} µs")


if __name__ == "__main__":
    main()

"""Time to map and cost every op of BERT-base (seq 512) on one accelerator configuration, per mapper.

    nice -n 19 python benchmarks/accel_speed.py [--hw gemmini-ibert] [--repeat 5] [--scalesim-python PATH] [--zigzag-python PATH]

Goals (issue 6): whole model <= 1 s, <= 10 ms per GEMM. SCALE-Sim and ZigZag, when a scratch interpreter is given, are
only checked for importability here: driving them needs their own config, layout and mapping files (not wired).
"""

from __future__ import annotations

import argparse
import subprocess
import time

from tstack.accel.model import run
from tstack.hardware.accel import load_accel


def _time(fn, repeat: int) -> float:  # any zero-argument callable
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _external(label: str, python: str | None, module: str) -> str:
    if not python:
        return f"{label}: not installed (pass --{label.lower().replace('-', '')}-python)"
    res = subprocess.run([python, "-c", f"import {module}"], capture_output=True, text=True, check=False)
    state = "importable" if res.returncode == 0 else f"not importable ({res.stderr.strip().splitlines()[-1]})"
    return f"{label}: {state} at {python}; not driven by this benchmark (needs its own config/layout files)"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hw", default="gemmini-ibert")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--scalesim-python")
    ap.add_argument("--zigzag-python")
    a = ap.parse_args()
    hw = load_accel(a.hw)
    for mapping in ("auto", "best"):
        result = run("bert-base", 512, hw, mapping=mapping)
        gemms = sum(1 for r in result.records if r.timing is not None)
        secs = _time(lambda m=mapping: run("bert-base", 512, hw, mapping=m), 1 if mapping == "best" else a.repeat)
        print(f"{hw.name} mapping={mapping}: {len(result.records)} ops ({gemms} distinct GEMMs) in {secs * 1e3:.1f} ms, "
              f"{secs / gemms * 1e3:.2f} ms per GEMM; model latency {result.seconds * 1e3:.2f} ms")
    print(_external("SCALE-Sim", a.scalesim_python, "scalesim"))
    print(_external("ZigZag", a.zigzag_python, "zigzag"))


if __name__ == "__main__":
    main()

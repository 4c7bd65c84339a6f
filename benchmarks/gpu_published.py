"""tstack's predictions next to published GPU measurements (tstack.profiler.published), with the ratio.

    PYTHONPATH=src python benchmarks/gpu_published.py
"""

from __future__ import annotations

from tstack.profiler.published import FIGURES, GOAL


def main() -> None:
    print(f"{'figure':34} {'mode':22} {'published':>10} {'tstack':>10} {'ratio':>6}  verdict")
    for f in FIGURES:
        predicted = f.predicted_seconds()
        r = predicted / f.seconds  # f.ratio(), without analyzing the model a second time
        mode = f"{f.run.execution}/{f.run.attention}/{f.run.precision}"
        verdict = "within" if abs(r - 1) <= GOAL else "MISS"
        print(f"{f.key:34} {mode:22} {f.seconds * 1e3:8.2f}ms {predicted * 1e3:8.2f}ms {r:6.2f}  "
              f"{verdict} ±{GOAL:.0%}")
        print(f"    source: {f.source}")
        if f.miss:
            print(f"    why:    {f.miss}")


if __name__ == "__main__":
    main()

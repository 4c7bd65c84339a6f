"""Speed of `tstack cluster search`: layouts evaluated per minute (goal, issue 16: ≥ 100,000 on a 2-core machine).

    python benchmarks/cluster_search.py [--executor serial|process|ray] [--repeat 3]

Cases: llama-70b on 1024 H100 (global batch 1024, sequence 4096, DGX H100 network) and gpt3-175b on 512 A100
(global batch 512, sequence 2048, DGX A100 network), all recomputation choices and ZeRO stages. Each case runs
--repeat times; the best wall time counts. Every family (tp, micro-batch, recompute, sequence parallel, ep) builds and
costs its workload once; its layouts (pp, interleave, dp, ZeRO, overlap) are composed with numpy. The load average
is printed next to the figures (the machine is shared); run under `chrt -f 20` for steadier numbers.
"""

from __future__ import annotations

import argparse
import os
import time

from tstack.hardware.device import load_device
from tstack.hardware.network import load_network
from tstack.models import load_model
from tstack.search.cluster import SearchSpace, families, search
from tstack.spec import RunSpec

CASES = (
    ("llama-70b", 1024, 1024, 4096, "bf16-mixed", "h100", "dgx-h100"),
    ("gpt3-175b", 512, 512, 2048, "fp16-mixed", "a100-80gb", "dgx-a100"),
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--executor", default="process", choices=("serial", "process", "ray"))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; cores: {os.cpu_count()}; "
          f"executor: {args.executor}")
    total_layouts, total_s = 0, 0.0
    for name, gpus, batch, seq, precision, device, network in CASES:
        model = load_model(name)
        run = RunSpec(mode="train", seq=seq, precision=precision, optimizer="adam")
        space = SearchSpace(gpus=gpus, global_batch=batch)
        dev, net = load_device(device), load_network(network)
        best = float("inf")
        for _ in range(args.repeat):
            start = time.perf_counter()
            keys = families(model, seq, space)
            result = search(model, run, dev, net, space, executor=args.executor, keys=keys)
            best = min(best, time.perf_counter() - start)
        top = result.rows(1)[0]
        total_layouts += result.evaluated
        total_s += best
        print(f"{name} on {gpus} x {device} ({network}): {len(keys)} families, "
              f"{result.evaluated} layouts ({result.fitting} fit) in {best:.3f} s = "
              f"{result.evaluated / best * 60:,.0f} layouts/minute; best: dp{top['dp']} tp{top['tp']} pp{top['pp']} "
              f"v{top['interleave']} mb{top['micro_batch']} {top['recompute']} sp={top['seq_parallel']} "
              f"zero{top['zero']} {top['seconds']:.2f} s/iteration")
    print(f"all cases: {total_layouts} layouts in {total_s:.3f} s = {total_layouts / total_s * 60:,.0f} layouts/minute "
          "(goal ≥ 100,000)")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()

"""Real latency of subnets on this machine: each extracted as a plain model and timed with the profiler's timer.

One forward of batch 1 at the space's sequence length (the run ``search.nas`` costs), fp32, ``threads`` intra-op
threads, under ``profiler.runtime.controlled`` (threads, flush-denormal), timed by ``profiler.timing.time_callable``
(median of ``repeats`` samples after ``warmup`` calls).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from tstack.nas.supernet import extract
from tstack.nas.train import load_supernet
from tstack.profiler.runtime import RuntimeConfig, controlled
from tstack.profiler.timing import Timing, time_callable
from tstack.search.nas import Arch


def measure(checkpoint: str | Path, archs: Sequence[Arch], threads: int = 1, warmup: int = 2,
            repeats: int = 10) -> list[Timing]:
    """The measured forward time of each subnet of a checkpoint's supernet, on the CPU."""
    net, _ = load_supernet(checkpoint, torch.device("cpu"))
    cfg = RuntimeConfig(device="cpu", threads=threads)
    ids = torch.randint(0, net.space.vocab, (1, net.space.seq), generator=torch.Generator().manual_seed(0))
    out = []
    with controlled(cfg), torch.no_grad():
        for a in archs:
            model = extract(net, a, share=False).eval()
            out.append(time_callable(lambda m=model: m(ids), cfg, warmup, repeats))
    return out

"""Timing a callable: warm-up, adaptive batching of tiny kernels, repeats, median and spread.

CPU: ``time.perf_counter_ns`` around each sample. CUDA: a pair of ``torch.cuda.Event`` records
around each sample and one ``torch.cuda.synchronize()`` per sample (warm-up ends synchronized),
so the figure is device time without host launch jitter in between.

A call shorter than ``min_sample_s`` (50 µs) is timed in batches of ``inner`` back-to-back calls
per sample and divided back, so clock resolution and per-sample overhead stay negligible. Samples
are taken until both ``repeats`` samples and ``min_time`` seconds are reached (at most
``max_repeats``). Following Demystifying BERT (002 §3.1.4), warm-up calls run first and are not
timed.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from tstack.errors import TstackError
from tstack.profiler.runtime import RuntimeConfig, load_torch

MIN_SAMPLE_S = 50e-6
MAX_INNER = 10_000


@dataclass(frozen=True)
class TimingPlan:
    """How each kernel is timed: ``warmup`` untimed calls, ``repeats`` timed samples (median), at least
    ``min_time`` seconds of samples, and ``rounds`` passes over the whole set of kernels.

    With several rounds a kernel's figure is the smallest of its rounds' medians. Interference from
    other work on the machine (other processes, other virtual machines on the host) only ever adds
    time, and it comes and goes over seconds to minutes; passes spread over the run, each in its
    own order, let every kernel be seen at least once in a quiet stretch, and the minimum of the
    medians keeps that one.
    """

    warmup: int = 3
    repeats: int = 10
    rounds: int = 1
    min_time: float = 0.0

    def __post_init__(self) -> None:
        for name, low, high in (("warmup", 0, 1000), ("repeats", 1, 10_000), ("rounds", 1, 100)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
                raise TstackError(f"{name}={v!r} must be an integer in [{low}, {high}]")
        if not 0.0 <= self.min_time <= 3600.0:
            raise TstackError(f"min_time={self.min_time!r} must be in [0, 3600] seconds")


@dataclass(frozen=True)
class Timing:
    """Seconds per call: median, 10th and 90th percentiles over ``repeats`` samples.

    ``samples`` are seconds per call of each sample (each the mean over ``inner`` calls).
    """

    median: float
    p10: float
    p90: float
    repeats: int
    samples: tuple[float, ...]
    inner: int = 1

    @classmethod
    def of(cls, samples: list[float] | tuple[float, ...], inner: int = 1) -> Timing:
        if not samples:
            raise TstackError("no timing samples")
        s = sorted(samples)
        return cls(statistics.median(s), _quantile(s, 0.10), _quantile(s, 0.90), len(s), tuple(samples), inner)

    @property
    def spread(self) -> float:
        """(p90 − p10) / median: the relative spread of the samples."""
        return (self.p90 - self.p10) / self.median if self.median else 0.0


def _quantile(sorted_samples: list[float], q: float) -> float:
    """Linear-interpolation quantile of sorted samples (numpy's default method)."""
    n = len(sorted_samples)
    pos = q * (n - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    return sorted_samples[lo] + (sorted_samples[hi] - sorted_samples[lo]) * (pos - lo)


def _cpu_sample(fn: Callable[[], object], inner: int) -> float:
    t0 = time.perf_counter_ns()
    for _ in range(inner):
        fn()
    return (time.perf_counter_ns() - t0) * 1e-9 / inner


def _cuda_sampler(torch):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def sample(fn: Callable[[], object], inner: int) -> float:
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) * 1e-3 / inner  # elapsed_time is in milliseconds

    return sample


def time_callable(fn: Callable[[], object], cfg: RuntimeConfig, warmup: int = 3, repeats: int = 10,
                  min_time: float = 0.0, max_repeats: int = 1000, min_sample_s: float = MIN_SAMPLE_S) -> Timing:
    """Time ``fn`` (one kernel launch, or a few) on ``cfg.device``; the caller applies ``controlled(cfg)``."""
    if repeats < 1 or warmup < 0:
        raise TstackError(f"repeats={repeats} must be ≥ 1 and warmup={warmup} ≥ 0")
    if cfg.device == "cuda":
        torch = load_torch()
        if not torch.cuda.is_available():
            raise TstackError("device='cuda' but torch.cuda.is_available() is false")
        sample = _cuda_sampler(torch)
        sync = torch.cuda.synchronize
    else:
        sample = _cpu_sample

        def sync() -> None:
            return None

    for _ in range(warmup):
        fn()
    sync()
    # Size the batch from one (already warm) call: enough calls per sample to last min_sample_s.
    one = sample(fn, 1)
    inner = 1 if one >= min_sample_s else min(MAX_INNER, math.ceil(min_sample_s / max(one, 1e-9)))
    samples: list[float] = []
    spent = 0.0
    while len(samples) < repeats or (spent < min_time and len(samples) < max_repeats):
        s = sample(fn, inner)
        samples.append(s)
        spent += s * inner
    return Timing.of(samples, inner)

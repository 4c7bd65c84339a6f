"""The skewness-minimized dynamic scheduler (003 §III-C.2, §V-B) against the paper's static assignments.

Work items are (head, key chunk) pairs of the column-based attention (003 §III-B.2): an item computes the scores of
all queries against one key chunk of one head, then the exponent and P·V of the query blocks that zero skipping keeps
(003 §III-C.1). With skipping, items differ in work, and a static split of items over threads waits for the slowest
thread at the synchronization after attention. Static policies (003 §III-C.2): *head-first* gives a thread different
heads of the same chunks, *chunk-first* different chunks of the same heads, *random* a random equal share. The
dynamic policy hands items from one FIFO queue to whichever worker is idle (003 §V-B).

Workers are real threads (PyTorch ops release the GIL), each with one intra-op thread; every item's busy interval is
recorded with ``time.perf_counter``, and utilization = Σ busy / (threads × makespan).

*Replay* (:func:`replay`): a simulation, not a measurement. Each item's time is the median of its measured busy
intervals over real runs (:func:`item_durations`); the policies are then played out on any number of virtual workers,
all starting at t = 0 s. It shows how the policies' imbalance grows with the thread count (003 reports 32 threads) on a
machine with fewer cores, but it ignores the shared-cache and memory-bandwidth contention that more threads than were
measured would add: item times do not stretch with the thread count.
"""

from __future__ import annotations

import heapq
import math
import queue
import random
import statistics
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from tstack.errors import SpecError
from tstack.kernels.zeroskip import EXP_FLOOR

POLICIES = ("head-first", "chunk-first", "random", "dynamic")
Item = tuple[int, int]  # (head, chunk)


@dataclass(frozen=True)
class Interval:
    """One item run by one worker, in seconds of ``time.perf_counter`` (in a replay: simulated, from 0)."""

    worker: int
    item: Item
    start: float
    end: float


@dataclass(frozen=True)
class ScheduleResult:
    """The busy intervals of one scheduled run, and the utilization and makespan they give."""

    policy: str
    threads: int
    intervals: tuple[Interval, ...]

    @property
    def makespan(self) -> float:
        """Seconds from the first item's start to the last item's end."""
        return max(i.end for i in self.intervals) - min(i.start for i in self.intervals)

    def busy(self) -> tuple[float, ...]:
        """Busy seconds of each worker."""
        out = [0.0] * self.threads
        for i in self.intervals:
            out[i.worker] += i.end - i.start
        return tuple(out)

    @property
    def utilization(self) -> float:
        """Σ busy / (threads × makespan), in (0, 1] (each worker runs its items one after another)."""
        span = self.makespan
        return sum(self.busy()) / (self.threads * span) if span > 0 else 1.0


def _check(heads: int, chunks: int, threads: int, policy: str) -> None:
    problems = [f"{name}={value!r} must be an integer ≥ 1" for name, value in
                (("heads", heads), ("chunks", chunks), ("threads", threads))
                if isinstance(value, bool) or not isinstance(value, int) or value < 1]
    if policy not in POLICIES:
        problems.append(f"policy={policy!r} is not one of {', '.join(POLICIES)}")
    if problems:
        raise SpecError(problems, "schedule")


def static_assignment(heads: int, chunks: int, threads: int, policy: str, seed: int = 0) -> list[list[Item]]:
    """Each thread's items under a static policy: the ordered item list cut into ``threads`` near-equal runs."""
    _check(heads, chunks, threads, policy)
    if policy == "head-first":  # consecutive items differ in head: a thread gets all heads of a few chunks
        order = [(h, c) for c in range(chunks) for h in range(heads)]
    elif policy == "chunk-first":  # consecutive items differ in chunk: a thread gets all chunks of a few heads
        order = [(h, c) for h in range(heads) for c in range(chunks)]
    elif policy == "random":
        order = [(h, c) for h in range(heads) for c in range(chunks)]
        random.Random(seed).shuffle(order)
    else:
        raise SpecError([f"policy={policy!r} is dynamic: it has no static assignment"], "schedule")
    bounds = [round(i * len(order) / threads) for i in range(threads + 1)]
    return [order[bounds[i]:bounds[i + 1]] for i in range(threads)]


def run_schedule(work: Callable[[int, Item], object], heads: int, chunks: int, threads: int, policy: str,
                 seed: int = 0) -> ScheduleResult:
    """Run ``work(worker, item)`` for every (head, chunk) on ``threads`` worker threads under ``policy``.

    Each worker sets flush-to-zero for itself (MXCSR is per thread): exponents of scores far under the row maximum are
    subnormal, and without FTZ/DAZ arithmetic on them is tens of times slower on x86.
    """
    _check(heads, chunks, threads, policy)
    if policy == "dynamic":
        fifo: queue.SimpleQueue[Item] = queue.SimpleQueue()
        for item in ((h, c) for h in range(heads) for c in range(chunks)):  # 003 §V-B: a head's chunks as it is ready
            fifo.put(item)

        def next_items(_: int):
            while True:
                try:
                    yield fifo.get_nowait()
                except queue.Empty:
                    return
    else:
        plan = static_assignment(heads, chunks, threads, policy, seed)

        def next_items(worker: int):
            yield from plan[worker]

    records: list[list[Interval]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def worker(w: int) -> None:
        torch.set_num_threads(1)  # one intra-op thread per worker: the workers are the parallelism
        torch.set_flush_denormal(True)
        start.wait()
        try:
            for item in next_items(w):
                t0 = time.perf_counter()
                work(w, item)
                records[w].append(Interval(w, item, t0, time.perf_counter()))
        except BaseException as e:  # re-raised in the caller's thread below
            errors.append(e)

    previous = torch.get_num_threads()
    pool = [threading.Thread(target=worker, args=(w,), name=f"tstack-sched-{w}") for w in range(threads)]
    try:
        for t in pool:
            t.start()
        for t in pool:
            t.join()
    finally:
        torch.set_num_threads(previous)
    if errors:
        raise errors[0]
    return ScheduleResult(policy, threads, tuple(i for r in records for i in r))


@dataclass(frozen=True)
class AttentionWork:
    """Column-based attention items with zero skipping: q (h, S, d), k and v (h, S_k, d), row maxima (h, S)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    m: torch.Tensor
    chunk: int  # keys per chunk, and query rows per skipping block
    log_threshold: float  # ln(score threshold); -inf skips nothing
    real_keys: int  # keys from this index on are padding (masked)

    @classmethod
    def build(cls, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunk: int, threshold: float,
              real_keys: int | None = None) -> AttentionWork:
        """Scale q by d^-1/2 and compute each row's maximum score over the real keys (the bound skipping compares to)."""
        real = k.shape[1] if real_keys is None else real_keys
        problems = []
        if not 0.0 <= threshold < 1.0:
            problems.append(f"threshold={threshold!r} must be in [0, 1)")
        if chunk < 1 or k.shape[1] % chunk or q.shape[1] % chunk:
            problems.append(f"chunk={chunk} must divide S={q.shape[1]} and S_k={k.shape[1]}")
        if not 1 <= real <= k.shape[1]:
            problems.append(f"real_keys={real} must be in [1, {k.shape[1]}]")
        if problems:
            raise SpecError(problems, "schedule")
        qs = q * q.shape[-1] ** -0.5
        m = torch.stack([(qs[h] @ k[h, :real].T).amax(-1) for h in range(q.shape[0])])  # (h, S)
        return cls(qs, k, v, m, chunk, math.log(threshold) if threshold > 0 else -math.inf, real)

    @property
    def heads(self) -> int:
        return self.q.shape[0]

    @property
    def chunks(self) -> int:
        return self.k.shape[1] // self.chunk

    def accumulators(self, threads: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-worker partial outputs (threads, h, S, d) and row sums (threads, h, S), zeroed."""
        h, s, d = self.q.shape
        return self.q.new_zeros(threads, h, s, d), self.q.new_zeros(threads, h, s)

    def run(self, item: Item, out: torch.Tensor, denom: torch.Tensor) -> int:
        """Item (head, chunk): scores of all queries, e^(s−m) and P·V of the kept query blocks; returns the kept rows."""
        h, c = item
        keys = slice(c * self.chunk, (c + 1) * self.chunk)
        s = self.q[h] @ self.k[h, keys].T  # (S, chunk)
        if keys.stop > self.real_keys:
            s[:, max(0, self.real_keys - keys.start):] = -math.inf  # padded keys
        m = self.m[h]
        bound = (m + self.log_threshold).view(-1, self.chunk)  # (S/chunk, chunk): p < threshold below it
        kept = (s.view(-1, self.chunk, self.chunk).amax(-1) >= bound).any(-1)  # (S/chunk,) query blocks
        rows = kept.repeat_interleave(self.chunk).nonzero().squeeze(1)  # query rows of the kept blocks
        if rows.numel():
            p = (s[rows] - m[rows, None]).clamp_min_(EXP_FLOOR).exp_()  # (n, chunk)
            denom[h].index_add_(0, rows, p.sum(-1))
            out[h].index_add_(0, rows, p @ self.v[h, keys])
        return int(rows.numel())


def scheduled_attention(work: AttentionWork, threads: int, policy: str, seed: int = 0) -> tuple[torch.Tensor, ScheduleResult]:
    """Run every item of ``work`` under ``policy``; the context (h, S, d) reduced from the workers' partials, and the run."""
    out, denom = work.accumulators(threads)
    result = run_schedule(lambda w, item: work.run(item, out[w], denom[w]), work.heads, work.chunks, threads, policy, seed)
    return out.sum(0) / denom.sum(0).unsqueeze(-1), result


def uneven_work(heads: int, chunks: int, chunk: int, head_dim: int, padding: float,
                seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Synthetic (q, k, v, real keys) of ``heads`` heads whose attention ranges from sharp to flat, keys padded at the end.

    Position features (cosines and sines of S = chunks·chunk positions) give every head a band around the diagonal;
    head i scales its queries by a sharpness from 8 down to 0.25, so sharp heads skip most tiles and flat ones none.
    The last ``padding`` share of keys is padding (masked).
    """
    problems = []
    if not 0.0 <= padding < 1.0:
        problems.append(f"padding={padding!r} must be in [0, 1)")
    if head_dim < 2 or head_dim % 2:
        problems.append(f"head_dim={head_dim} must be an even number ≥ 2 (cosine and sine position features)")
    if problems:
        raise SpecError(problems, "schedule")
    gen = torch.Generator().manual_seed(seed)
    s = chunks * chunk
    pos = torch.arange(s, dtype=torch.float32)
    freqs = torch.linspace(0.5 / s, 0.3, head_dim // 2)
    feat = torch.cat([torch.cos(pos[:, None] * freqs), torch.sin(pos[:, None] * freqs)], -1)  # (S, d)
    sharp = torch.logspace(math.log10(8.0), math.log10(0.25), heads)
    q = feat * sharp[:, None, None] + 0.1 * torch.randn(heads, s, head_dim, generator=gen)  # (h, S, d)
    k = feat.expand(heads, s, head_dim).contiguous()
    v = torch.randn(heads, s, head_dim, generator=gen)
    return q, k, v, max(1, s - round(padding * s))


INTERVAL_BYTES = 320  # one recorded Interval: the object, its item tuple and two floats, with a list slot


def repeated_runs(work: AttentionWork, threads: int, policies: Sequence[str], repeats: int,
                  seed: int = 0) -> dict[str, list[ScheduleResult]]:
    """Per policy, ``repeats`` runs taken round-robin (after one warm-up run, which is not returned)."""
    scheduled_attention(work, threads, "dynamic", seed)
    runs: dict[str, list[ScheduleResult]] = {p: [] for p in policies}
    for _ in range(repeats):
        for p in policies:
            runs[p].append(scheduled_attention(work, threads, p, seed)[1])
    return runs


def median_run(runs: Sequence[ScheduleResult]) -> ScheduleResult:
    """The run with the median makespan (the lower one of the middle two for an even count)."""
    return sorted(runs, key=lambda x: x.makespan)[(len(runs) - 1) // 2]


def item_durations(runs: Sequence[ScheduleResult]) -> dict[Item, float]:
    """Per item, the median of its measured busy seconds (end − start) over ``runs``, which each run every item once."""
    if not runs:
        raise SpecError(["runs is empty: item times need at least one run"], "replay")
    items = {i.item for i in runs[0].intervals}
    problems = []
    for n, r in enumerate(runs):
        mine = [i.item for i in r.intervals]
        if not mine or len(set(mine)) != len(mine) or set(mine) != items:
            problems.append(f"run {n} ({r.policy}): {len(mine)} intervals, {len(set(mine))} distinct items, "
                            f"{len(set(mine) ^ items)} items in only one of it and run 0; every run must run the same "
                            "items once each")
    if problems:
        raise SpecError(problems, "replay")
    times: dict[Item, list[float]] = {item: [] for item in sorted(items)}
    for r in runs:
        for i in r.intervals:
            times[i.item].append(i.end - i.start)
    return {item: statistics.median(t) for item, t in times.items()}


def replay(durations: Mapping[Item, float], heads: int, chunks: int, threads: int, policy: str,
           seed: int = 0) -> ScheduleResult:
    """Simulate ``policy`` on ``threads`` virtual workers from item times in seconds (all workers start at 0 s).

    Static policies run each worker's share of :func:`static_assignment` back to back; *dynamic* hands the items in
    :func:`run_schedule`'s FIFO order to the worker that is free first (ties: lowest worker index).
    """
    _check(heads, chunks, threads, policy)
    expected = {(h, c) for h in range(heads) for c in range(chunks)}
    problems = [f"item {item} is missing from durations" for item in sorted(expected - durations.keys())]
    problems += [f"item {item} is not in {heads} heads × {chunks} chunks" for item in sorted(set(durations) - expected)]
    problems += [f"duration of item {item} is {d!r}: must be finite and ≥ 0 s" for item, d in sorted(durations.items())
                 if item in expected and not (math.isfinite(d) and d >= 0)]
    if problems:
        raise SpecError(problems, "replay")
    intervals: list[Interval] = []
    if policy == "dynamic":
        free = [(0.0, w) for w in range(threads)]  # (free from, worker): a min-heap, ties to the lower index
        for item in ((h, c) for h in range(heads) for c in range(chunks)):
            t, w = heapq.heappop(free)
            intervals.append(Interval(w, item, t, t + durations[item]))
            heapq.heappush(free, (t + durations[item], w))
    else:
        for w, share in enumerate(static_assignment(heads, chunks, threads, policy, seed)):
            t = 0.0
            for item in share:
                intervals.append(Interval(w, item, t, t + durations[item]))
                t += durations[item]
    return ScheduleResult(policy, threads, tuple(intervals))

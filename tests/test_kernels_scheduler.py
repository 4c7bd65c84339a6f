"""The dynamic scheduler and the static assignments (003 §III-C.2): coverage, recorded busy intervals, exact output."""

from __future__ import annotations

import math
import threading
import time

import pytest

torch = pytest.importorskip("torch")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tstack.errors import SpecError  # noqa: E402
from tstack.kernels.scheduler import (  # noqa: E402
    POLICIES,
    AttentionWork,
    Interval,
    ScheduleResult,
    item_durations,
    median_run,
    replay,
    run_schedule,
    scheduled_attention,
    static_assignment,
    uneven_work,
)

STATIC = ("head-first", "chunk-first", "random")


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.integers(1, 6), st.sampled_from(STATIC), st.integers(0, 99))
def test_static_assignment_covers_every_item_once(heads, chunks, threads, policy, seed):
    plan = static_assignment(heads, chunks, threads, policy, seed)
    items = [i for part in plan for i in part]
    assert sorted(items) == [(h, c) for h in range(heads) for c in range(chunks)]
    sizes = [len(p) for p in plan]
    assert len(plan) == threads and max(sizes) - min(sizes) <= 1


def test_static_policies_follow_the_paper():
    head_first = static_assignment(16, 64, 32, "head-first")
    chunk_first = static_assignment(16, 64, 32, "chunk-first")
    assert {h for h, _ in head_first[0]} == set(range(16)) and {c for _, c in head_first[0]} == {0, 1}
    assert {h for h, _ in chunk_first[0]} == {0} and {c for _, c in chunk_first[0]} == set(range(32))
    assert static_assignment(4, 4, 2, "random", 1) != static_assignment(4, 4, 2, "random", 2)


def _sleepy(cost):
    def work(worker, item):
        time.sleep(cost(item))
    return work


@settings(max_examples=12, deadline=None)
@given(st.integers(1, 4), st.integers(1, 6), st.integers(1, 3), st.sampled_from(POLICIES))
def test_utilization_from_busy_intervals_is_in_unit_interval(heads, chunks, threads, policy):
    result = run_schedule(_sleepy(lambda item: 1e-4 * (1 + item[0])), heads, chunks, threads, policy)
    assert sorted(i.item for i in result.intervals) == [(h, c) for h in range(heads) for c in range(chunks)]
    assert 0.0 < result.utilization <= 1.0
    busy = sum(i.end - i.start for i in result.intervals)
    assert result.utilization == pytest.approx(busy / (threads * result.makespan))
    for w in range(threads):  # a worker's intervals never overlap
        mine = sorted((i.start, i.end) for i in result.intervals if i.worker == w)
        assert all(a[1] <= b[0] for a, b in zip(mine, mine[1:]))


def test_utilization_and_makespan_of_recorded_intervals():
    result = ScheduleResult("dynamic", 2, (Interval(0, (0, 0), 0.0, 3.0), Interval(1, (0, 1), 1.0, 2.0)))
    assert result.makespan == 3.0
    assert result.busy() == (3.0, 1.0)
    assert result.utilization == pytest.approx(4.0 / 6.0)


def test_dynamic_hands_the_rest_to_idle_workers():
    """While one worker is held by a long item, the queue gives every other item to the idle worker."""
    done = threading.Event()
    finished = []

    def work(worker, item):
        if item == (0, 0):
            assert done.wait(timeout=30)
        else:
            finished.append(item)
            if len(finished) == 2 * 6 - 1:
                done.set()

    result = run_schedule(work, 2, 6, 2, "dynamic")
    holder = next(i.worker for i in result.intervals if i.item == (0, 0))
    assert [i.item for i in result.intervals if i.worker == holder] == [(0, 0)]


def test_worker_errors_reach_the_caller():
    def work(worker, item):
        if item == (1, 1):
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        run_schedule(work, 2, 2, 2, "dynamic")
    assert threading.active_count() >= 1


@pytest.mark.parametrize("kwargs,field", [({"policy": "fifo"}, "policy"), ({"threads": 0}, "threads"),
                                          ({"heads": 0}, "heads")])
def test_bad_arguments_name_the_field(kwargs, field):
    args = {"heads": 2, "chunks": 2, "threads": 2, "policy": "dynamic"} | kwargs
    with pytest.raises(SpecError, match=field):
        run_schedule(lambda w, i: None, **args)


def _exact(work: AttentionWork, v):
    keys = torch.arange(work.k.shape[1])
    s = (work.q @ work.k.transpose(-1, -2)).masked_fill(keys >= work.real_keys, -math.inf)
    return s.softmax(-1) @ v


@pytest.mark.parametrize("policy", POLICIES)
def test_scheduled_attention_is_exact_without_skipping(policy):
    q, k, v, real = uneven_work(3, 4, 8, 8, 0.25)
    work = AttentionWork.build(q, k, v, 8, 0.0, real)
    out, result = scheduled_attention(work, 2, policy)
    assert torch.allclose(out, _exact(work, v), atol=1e-5)
    assert len(result.intervals) == 12


def test_skipping_makes_items_uneven_and_stays_close():
    from tstack.profiler.runtime import RuntimeConfig, controlled

    q, k, v, real = uneven_work(4, 8, 16, 16, 0.25)
    work = AttentionWork.build(q, k, v, 16, 1e-3, real)
    out_acc, den_acc = work.accumulators(1)
    with controlled(RuntimeConfig(threads=1)):  # FTZ: the sharp heads' exponents are subnormal
        kept = {(h, c): work.run((h, c), out_acc[0], den_acc[0]) for h in range(4) for c in range(8)}
    assert kept[(3, 0)] == 128 and kept[(0, 7)] == 0  # flat head keeps all rows; sharp head, padded chunk: none
    assert max(kept.values()) > min(kept.values())
    exact = _exact(work, v)
    assert (out_acc[0] / den_acc[0].unsqueeze(-1) - exact).abs().max() < 0.05


def test_build_rejects_bad_inputs():
    q, k, v, real = uneven_work(2, 2, 4, 4, 0.0)
    with pytest.raises(SpecError, match="threshold"):
        AttentionWork.build(q, k, v, 4, 1.5)
    with pytest.raises(SpecError, match="chunk"):
        AttentionWork.build(q, k, v, 3, 0.0)
    with pytest.raises(SpecError, match="padding"):
        uneven_work(2, 2, 4, 4, 1.0)


def test_schedule_command_prints_every_policy():
    import typer
    from typer.testing import CliRunner

    from tstack.cli.opt_zs import schedule

    app = typer.Typer()
    app.command()(schedule)
    app.command("other")(lambda: None)  # two commands: typer keeps `schedule` as a subcommand name
    res = CliRunner().invoke(app, ["schedule", "--heads", "2", "--chunks", "4", "--chunk-keys", "8", "--head-dim", "8",
                                   "--repeats", "1"])
    assert res.exit_code == 0, res.output
    for name in POLICIES:
        assert name in res.output
    bad = CliRunner().invoke(app, ["schedule", "--policies", "fifo"])
    assert bad.exit_code != 0 and "fifo" in str(bad.exception)


# Replay: the policies simulated on virtual workers from measured item times.
EVEN = {(0, 0): 4.0, (0, 1): 1.0, (1, 0): 1.0, (1, 1): 1.0}  # Σ = 7 s
UNEVEN = EVEN | {(1, 0): 2.0}  # Σ = 8 s


@pytest.mark.parametrize("durations,policy,makespan,utilization", [
    # head-first cuts (0,0) (1,0) | (0,1) (1,1): worker 0 busy 4 + 1 = 5 s, worker 1 1 + 1 = 2 s -> 5 s, 7 / (2·5)
    (EVEN, "head-first", 5.0, 7 / 10),
    # chunk-first cuts (0,0) (0,1) | (1,0) (1,1): 4 + 1 = 5 s and 1 + 1 = 2 s -> 5 s, 7 / (2·5)
    (EVEN, "chunk-first", 5.0, 7 / 10),
    # dynamic, FIFO (0,0) (0,1) (1,0) (1,1): w0 takes (0,0) at 0 (tie -> lower index), w1 (0,1) at 0, is free at 1 and
    # takes (1,0), free at 2 takes (1,1), ends at 3; w0 ends at 4 -> 4 s, 7 / (2·4)
    (EVEN, "dynamic", 4.0, 7 / 8),
    # with (1,0) = 2 s: head-first 4 + 2 = 6 s vs 1 + 1 = 2 s -> 6 s, 8 / 12
    (UNEVEN, "head-first", 6.0, 8 / 12),
    # chunk-first 4 + 1 = 5 s vs 2 + 1 = 3 s -> 5 s, 8 / 10
    (UNEVEN, "chunk-first", 5.0, 8 / 10),
    # dynamic: w0 (0,0) 0-4; w1 (0,1) 0-1, (1,0) 1-3, (1,1) 3-4 -> 4 s, 8 / 8
    (UNEVEN, "dynamic", 4.0, 1.0),
])
def test_replay_by_hand(durations, policy, makespan, utilization):
    r = replay(durations, 2, 2, 2, policy)
    assert (r.policy, r.threads) == (policy, 2)
    assert r.makespan == makespan and r.utilization == utilization


def test_dynamic_replay_intervals_by_hand():
    r = replay(UNEVEN, 2, 2, 2, "dynamic")
    assert r.intervals == (Interval(0, (0, 0), 0.0, 4.0), Interval(1, (0, 1), 0.0, 1.0),
                           Interval(1, (1, 0), 1.0, 3.0), Interval(1, (1, 1), 3.0, 4.0))


def test_replay_of_zero_durations():
    r = replay(dict.fromkeys(EVEN, 0.0), 2, 2, 3, "dynamic")
    assert r.makespan == 0.0 and r.utilization == 1.0 and r.busy() == (0.0, 0.0, 0.0)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 4), st.integers(1, 5), st.integers(1, 6), st.sampled_from(POLICIES), st.integers(0, 99),
       st.data())
def test_replay_bounds(heads, chunks, threads, policy, seed, data):
    items = [(h, c) for h in range(heads) for c in range(chunks)]
    times = data.draw(st.lists(st.floats(0.0, 10.0), min_size=len(items), max_size=len(items)))
    durations = dict(zip(items, times))
    total, longest = sum(times), max(times)
    r = replay(durations, heads, chunks, threads, policy, seed)
    assert sorted(i.item for i in r.intervals) == items
    assert sum(r.busy()) == pytest.approx(total)
    assert 0.0 < r.utilization <= 1.0 + 1e-12
    lower = max(total / threads, longest)
    assert r.makespan >= lower * (1 - 1e-12)
    if policy == "dynamic":  # Graham: list scheduling ends by Σ/T + (1 − 1/T)·(the last item) ≤ Σ/T + (1 − 1/T)·max
        assert r.makespan <= (total / threads + longest * (1 - 1 / threads)) * (1 + 1e-12)
    else:
        plan = static_assignment(heads, chunks, threads, policy, seed)
        assert all([i.item for i in r.intervals if i.worker == w] == plan[w] for w in range(threads))


def _run(policy, times):
    """A fake run of items (0, 0) and (0, 1) on one worker, back to back from 10 s, with the given busy seconds."""
    return ScheduleResult(policy, 1, (Interval(0, (0, 0), 10.0, 10.0 + times[0]),
                                      Interval(0, (0, 1), 10.0 + times[0], 10.0 + times[0] + times[1])))


def test_item_durations_take_the_median_over_runs():
    runs = [_run("head-first", (1.0, 3.0)), _run("dynamic", (5.0, 3.0)), _run("random", (2.0, 3.0))]
    assert item_durations(runs) == {(0, 0): pytest.approx(2.0), (0, 1): pytest.approx(3.0)}
    assert median_run(runs) is runs[2]  # makespans 4, 8, 5 s


def test_item_durations_reject_empty_and_mismatched_runs():
    with pytest.raises(SpecError, match="empty"):
        item_durations([])
    other = ScheduleResult("dynamic", 1, (Interval(0, (0, 0), 0.0, 1.0), Interval(0, (1, 1), 1.0, 2.0)))
    with pytest.raises(SpecError, match="run 1 .*same items"):
        item_durations([_run("dynamic", (1.0, 1.0)), other])
    twice = ScheduleResult("dynamic", 1, (Interval(0, (0, 0), 0.0, 1.0),) * 2)
    with pytest.raises(SpecError, match="run 0 .*once each"):
        item_durations([twice])


@pytest.mark.parametrize("durations,message", [
    ({(0, 0): 1.0, (0, 1): 1.0, (1, 0): 1.0}, r"item \(1, 1\) is missing"),
    (EVEN | {(2, 0): 1.0}, r"item \(2, 0\) is not in 2 heads × 2 chunks"),
    (EVEN | {(0, 1): -0.5}, r"item \(0, 1\) is -0.5"),
    (EVEN | {(1, 0): math.inf}, r"item \(1, 0\) is inf"),
    (EVEN | {(1, 1): math.nan}, r"item \(1, 1\) is nan"),
])
def test_replay_rejects_bad_durations(durations, message):
    with pytest.raises(SpecError, match=message):
        replay(durations, 2, 2, 2, "dynamic")


def _cli(*args):
    from typer.testing import CliRunner

    from tstack.cli.core import app

    return CliRunner().invoke(app, ["opt", "schedule", "--heads", "2", "--chunks", "4", "--chunk-keys", "16",
                                    "--head-dim", "8", "--repeats", "1", *args])


def test_schedule_command_prints_the_replay():
    res = _cli("--replay-threads", "4")
    assert res.exit_code == 0, res.output
    assert "replay of measured item times on 4 simulated threads" in res.output
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in res.output.splitlines() if line.count("│") == 7]
    assert sorted((r[0], r[2]) for r in rows if r[1] == "4") == sorted((t, p) for t in ("0", "0.001") for p in POLICIES)
    res = _cli("--replay-threads", "")
    assert res.exit_code == 0, res.output
    assert "simulated threads" not in res.output


@pytest.mark.parametrize("value", ["0", "4,-2", "4,x", "2.5"])
def test_schedule_command_rejects_bad_replay_threads(value):
    res = _cli("--replay-threads", value)
    assert res.exit_code != 0
    assert isinstance(res.exception, SpecError) and "--replay-threads" in str(res.exception)
    assert repr(value) in str(res.exception)

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

    from tstack.cli_opt_zs import schedule

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
